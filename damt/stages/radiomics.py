"""The per-subject ``radiomics`` stage: PyRadiomics features of a subject's ROIs.

Adapts :mod:`damt.features.radiomics` (the PyRadiomics call, ROIs and the cohort table) to the
per-subject machinery of :mod:`damt.stages.store`; ``damt radiomics`` runs the same code on one
subject folder or on any image/mask pair (:func:`damt.cli.radiomics_to_file`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from damt.errors import SubjectError
from damt.features.radiomics import (
    OUTPUT_FILE,
    Extractor,
    extract_rois,
    parse_rois,
    write_row,
)
from damt.io import sha256_file
from damt.results import OK
from damt.stages.image_atlas import ImageAtlasStage
from damt.stages.store import SubjectResult, SubjectTask
from damt.volumes import load_sitk


class RadiomicsStage(ImageAtlasStage):
    """Per-subject radiomics of the workflow (image and atlas from the subject folder)."""

    name = "radiomics"
    version = "1"

    def __init__(
        self,
        params: str | Path,
        rois: Mapping[str, Sequence[int | str]],
        image: str,
        atlas: str,
        fastsurfer: Mapping | None,
        threads: int,
    ):
        self.params_path = str(params)
        self.params_hash = sha256_file(params)
        self.roi_spec = {k: list(v) for k, v in rois.items()}
        self.rois = parse_rois(self.roi_spec)
        super().__init__(image, atlas, fastsurfer)
        self.threads = threads
        self.extractor: Extractor | None = None

    def setup(self) -> None:
        self.extractor = Extractor(self.params_path, self.threads)

    def params(self) -> dict:
        return {**super().params(), "params_sha256": self.params_hash, "rois": self.roi_spec}

    def compute(self, task: SubjectTask, workdir: Path) -> SubjectResult:
        assert self.extractor is not None, "setup() builds the extractor"
        image, atlas, _ = self.load_pair(task, load_sitk)
        features, errors = extract_rois(self.extractor, image, atlas, self.rois)
        if not features:
            reasons = sorted({e.split(":", 1)[0] for e in errors.values()})
            raise SubjectError(
                reasons[0] if len(reasons) == 1 else "all_rois_failed",
                "; ".join(f"{k}: {v}" for k, v in errors.items()),
            )
        write_row(workdir / OUTPUT_FILE, task.subject_id, features)
        return SubjectResult(
            task.subject_id,
            OK,
            outputs={"features": OUTPUT_FILE},
            info={"roi_errors": errors, "n_features": len(features)},
        )
