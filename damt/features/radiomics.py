"""PyRadiomics texture features of a T1 volume inside atlas-defined regions of interest.

One code path serves the workflow (a subject folder, ROIs as label groups of ``aparc+aseg``) and
the command line on any image/mask pair (``--image/--mask [--label]``): both build a binary ROI
mask on the atlas grid and call PyRadiomics' extractor on the untouched image.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from damt.errors import SubjectError
from damt.features.tables import cohort_frame, write_table
from damt.io import sha256_file, write_atomic
from damt.results import OK, read_summaries
from damt.volumes import check_pair, load_sitk, sitk_geometry

log = logging.getLogger(__name__)
RANGE_RE = re.compile(r"^(\d+)-(\d+)$")
ORIGINAL_PREFIX = "original_"
OUTPUT_FILE = "radiomics.parquet"


@dataclass(frozen=True)
class Roi:
    """A region of interest: a name (column prefix) and the atlas labels it unites."""

    name: str
    labels: tuple[int, ...] | None  # None: every non-zero label

    def mask(self, atlas: np.ndarray) -> np.ndarray:
        if self.labels is None:
            return atlas != 0
        return np.isin(atlas, self.labels)


def parse_rois(spec: Mapping[str, Sequence[int | str]]) -> list[Roi]:
    """ROIs from config: each a list of label ids, ``"a-b"`` ranges, or ``"nonzero"``."""
    rois = []
    for name, items in spec.items():
        if list(items) == ["nonzero"]:
            rois.append(Roi(name, None))
            continue
        labels: set[int] = set()
        for item in items:
            if isinstance(item, int):
                labels.add(item)
            elif m := RANGE_RE.match(str(item)):
                lo, hi = int(m.group(1)), int(m.group(2))
                if lo > hi:
                    raise ValueError(f"radiomics ROI {name}: empty range {item!r}")
                labels.update(range(lo, hi + 1))
            else:
                raise ValueError(
                    f"radiomics ROI {name}: {item!r} is not a label, 'a-b' range "
                    "or 'nonzero' (alone)"
                )
        rois.append(Roi(name, tuple(sorted(labels))))
    return rois


def feature_name(roi: str, key: str) -> str:
    """Column name: ``{roi}_{class}_{feature}``, keeping the image type unless it is original."""
    if key.startswith(ORIGINAL_PREFIX):
        key = key[len(ORIGINAL_PREFIX) :]
    return f"{roi}_{key}"


class Extractor:
    """A PyRadiomics extractor built once from a params file (PyRadiomics' own YAML format)."""

    def __init__(self, params: str | Path, threads: int = 1):
        import radiomics
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        radiomics.setVerbosity(logging.ERROR)
        # PyRadiomics logs every feature class at INFO and notes settings at WARNING.
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        logging.getLogger("pykwalify").setLevel(logging.WARNING)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))
        self.params = Path(params)
        self.extractor = RadiomicsFeatureExtractor(str(self.params))

    def extract(self, image: sitk.Image, mask: sitk.Image, label: int = 1) -> dict[str, float]:
        """Feature values (PyRadiomics names, diagnostics dropped) of one mask label."""
        result = self.extractor.execute(image, mask, label=label)
        return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def extract_rois(
    extractor: Extractor, image: sitk.Image, atlas: sitk.Image, rois: Sequence[Roi]
) -> tuple[dict[str, float], dict[str, str]]:
    """Features of every ROI; a failing ROI gives an error entry, not an exception.

    Returns ``(features, errors)`` where errors maps ROI name → ``reason: detail``.
    """
    check_pair(
        sitk_geometry(image), sitk_geometry(atlas), sitk.GetArrayViewFromImage(image), "image"
    )
    labels = sitk.GetArrayViewFromImage(atlas)
    features: dict[str, float] = {}
    errors: dict[str, str] = {}
    for roi in rois:
        mask = roi.mask(labels)
        if not mask.any():
            errors[roi.name] = "empty_roi: no voxel of the atlas carries the ROI's labels"
            continue
        mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
        mask_img.CopyInformation(atlas)
        try:
            for key, val in extractor.extract(image, mask_img, 1).items():
                features[feature_name(roi.name, key)] = val
        except (ValueError, RuntimeError, IndexError, ZeroDivisionError) as exc:
            errors[roi.name] = f"pyradiomics_error: {type(exc).__name__}: {exc}"
    return features, errors


def write_row(path: Path, subject_id: str, features: Mapping[str, float]) -> None:
    """One-row Parquet of a subject's features."""
    frame = pd.DataFrame([features], dtype="float64")
    frame.insert(0, "subject_id", subject_id)
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def radiomics_for_files(
    image: str | Path,
    mask: str | Path,
    params: str | Path,
    label: int | None = None,
    threads: int = 1,
    subject_id: str | None = None,
) -> pd.DataFrame:
    """Features of an image inside ``mask == label`` (or ``mask != 0``), as a one-row frame.

    Raises :class:`SubjectError` for a grid mismatch, empty ROI or PyRadiomics failure.
    """
    extractor = Extractor(params, threads)
    roi = Roi(f"label{label}" if label is not None else "mask", None if label is None else (label,))
    features, errors = extract_rois(extractor, load_sitk(image), load_sitk(mask), [roi])
    if errors:
        reason, _, detail = errors[roi.name].partition(": ")
        raise SubjectError(reason, f"{mask}: {detail}")
    frame = pd.DataFrame([features], dtype="float64")
    frame.insert(0, "subject_id", subject_id or Path(image).name.split(".")[0])
    return frame


def build_radiomics_table(
    summaries: Sequence[str | Path],
    subject_ids: Sequence[str],
    params: str | Path,
    rois: Mapping[str, Sequence[int | str]],
    out: str | Path,
) -> pd.DataFrame:
    """Cohort table from the shard summaries: one row per subject, NaN for failed subjects.

    Columns are every ROI × feature seen, in ROI order, then PyRadiomics' order.
    """
    summary = read_summaries(summaries)
    wanted = set(subject_ids)
    rows: dict[str, dict[str, float]] = {}
    for rec in summary.itertuples():
        if rec.status == OK and rec.subject_id in wanted:
            frame = pd.read_parquet(rec.outputs["features"])
            rows[rec.subject_id] = frame.drop(columns="subject_id").iloc[0].to_dict()
    order = [r.name for r in parse_rois(rois)]
    seen: dict[str, None] = {}
    for row in rows.values():
        seen.update(dict.fromkeys(row))

    def roi_index(column: str) -> int:
        # Longest matching prefix: ROI names may prefix each other ("gm", "gm_left").
        return max((len(r), i) for i, r in enumerate(order) if column.startswith(f"{r}_"))[1]

    columns = sorted(seen, key=roi_index)  # stable: PyRadiomics' order within an ROI
    table = cohort_frame(subject_ids, rows, columns)
    failed = {
        r.subject_id: f"{r.reason}: {r.detail}" for r in summary.itertuples() if r.status != OK
    }
    write_table(
        table,
        out,
        {
            "group": "radiomics",
            "params_file": str(params),
            "params_sha256": sha256_file(params),
            "pyradiomics_version": version("pyradiomics"),
            "rois": {k: list(v) for k, v in rois.items()},
            "n_subjects": len(table),
            "n_features": len(columns),
            "failed": failed,
        },
    )
    return table
