"""Frozen-encoder features of any subjects (``damt embed``): each volume through the run's
preprocessing (:func:`damt.downstream.preprocess`), its foreground centred on one grid for all,
brain tokens pooled (:func:`damt.probe.features.foreground_features`, as the probe does).

A volume that fails is reported with its reason and skipped; the others are embedded.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from damt.discovery.scan import INCLUDED, discover_subjects
from damt.downstream import encoder, preprocess, read_card
from damt.freesurfer.recon import is_fastsurfer
from damt.io import sha256_file
from damt.manifest import KEY
from damt.probe.features import centred, foreground_box, probe_grid
from damt.stages.cache import settings_from_card

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".mgz", ".mgh", ".nii", ".nii.gz")


@dataclass
class EmbeddingInputs:
    """The volumes to embed (subject id → ``{"image": path, "mask": path or None}``) and the
    candidates refused before reading any volume (subject id → reason)."""

    volumes: dict[str, dict] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def add(self, subject_id: str, item: dict, where: str) -> None:
        if subject_id in self.volumes:
            raise ValueError(
                f"subject id {subject_id} twice ({self.volumes[subject_id]['image']} and "
                f"{where}): give the volumes distinct names"
            )
        self.volumes[subject_id] = item


def _layout(card: Mapping, folder: Path) -> dict:
    """The image (and mask) of a subject folder, by its segmenter, as the card names them."""
    layouts = card["preprocessing"]["input"]
    names = layouts["fastsurfer" if is_fastsurfer(folder) else "freesurfer"]
    mask = names.get("mask")
    return {"image": str(folder / names["image"]), "mask": str(folder / mask) if mask else None}


def _volume_id(path: Path) -> str:
    """A volume's subject id: the subject folder of ``<subject>/mri/<file>``, else the file name
    without its suffix."""
    if path.parent.name == "mri":
        return path.parent.parent.name
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def embedding_inputs(card: Mapping, sources: Sequence[str | Path]) -> EmbeddingInputs:
    """The volumes of ``sources``: a manifest (``manifest.parquet``: its discovered subjects,
    relative paths read from the current folder, as the workflow wrote them), a
    ``SUBJECTS_DIR`` (its subjects, found as the workflow finds them) or volume files (NIfTI or
    MGZ, no mask), in any mix."""
    settings_from_card(card.get("preprocessing"))  # refuses a card without it, or a newer one
    layouts = card["preprocessing"]["input"]
    out = EmbeddingInputs()
    for source in map(Path, sources):
        if source.is_dir():
            found = discover_subjects(
                [{"path": str(source), "optional": False}],
                required_files=[layouts["freesurfer"]["image"]],
                exclude=["fsaverage*"],
                n_shards=0,
                include_templates=False,
                fastsurfer_required_files=[layouts["fastsurfer"]["image"]],
            )
            for subject in found.subjects:
                out.add(subject.subject_id, _layout(card, Path(subject.path)), subject.path)
            for finding in found.report:
                if finding.status != INCLUDED:
                    out.refused[finding.subject_id] = f"{finding.reason}: {finding.detail}"
        elif source.suffix == ".parquet":
            manifest = pd.read_parquet(source)
            for row in manifest.itertuples(index=False):
                sid = str(getattr(row, KEY))
                if row.discovery != INCLUDED:
                    out.refused[sid] = f"not a discovered subject ({row.discovery}: {row.detail})"
                elif not Path(row.path).is_dir():
                    out.refused[sid] = (
                        f"{row.path} is not a folder here (a manifest's relative paths are read "
                        "from the folder the workflow ran in)"
                    )
                else:
                    out.add(sid, _layout(card, Path(row.path)), row.path)
        elif source.name.lower().endswith(VOLUME_SUFFIXES):
            out.add(_volume_id(source), {"image": str(source), "mask": None}, str(source))
        else:
            raise ValueError(
                f"{source}: not a folder, a manifest (.parquet) or a volume "
                f"({', '.join(VOLUME_SUFFIXES)})"
            )
    return out


def _reason(exc: BaseException) -> str:
    """Why a volume failed: the error under MONAI's ``RuntimeError`` wrappers."""
    while type(exc) is RuntimeError and exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def embed(
    run_or_card: str | Path,
    inputs: EmbeddingInputs,
    device: str | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Pooled features of ``inputs``: (one row per embedded subject: ``subject_id``, ``run``,
    ``weights_sha256``, ``f0`` ...; subject id → reason for each one refused or failed).

    ``device``: ``cuda`` when one is there, else the CPU. The preprocessed volumes wait in a
    temporary folder (float16) until every subject's extent, hence the common grid, is known.
    """
    import torch
    from tqdm import tqdm

    from damt.model import pooled_features
    from damt.model.encoder import encoder_stride

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    card, run_dir = read_card(run_or_card)
    pipeline = preprocess(card)
    model = encoder(run_dir, device=device)
    failed = dict(inputs.refused)
    with tempfile.TemporaryDirectory(prefix="damt-embed-") as tmp:
        done: dict[str, tuple[Path, tuple[int, ...]]] = {}
        bar = tqdm(
            inputs.volumes.items(),
            desc="preprocess",
            unit="volume",
            disable=not progress,
            file=sys.stderr,
        )
        for sid, item in bar:
            try:
                image = pipeline(dict(item))["image"][0].numpy()  # (D, H, W) float16
                box = foreground_box(image)
            except Exception as exc:  # one bad volume never stops the others
                failed[sid] = _reason(exc)
                log.warning("embed: %s skipped: %s", sid, failed[sid])
                continue
            path = Path(tmp) / f"{len(done)}.npy"
            np.save(path, image)
            done[sid] = (path, tuple(b.stop - b.start for b in box))
        grid = (
            probe_grid([shape for _, shape in done.values()], encoder_stride(model)) if done else ()
        )
        rows = []
        ids = list(done)
        for start in tqdm(
            range(0, len(ids), batch_size),
            desc="embed",
            unit="batch",
            disable=not progress,
            file=sys.stderr,
        ):
            batch = ids[start : start + batch_size]
            x = np.stack([centred(np.load(done[s][0]), grid) for s in batch])[:, None]
            rows.append(pooled_features(model, torch.from_numpy(x)).float().cpu().numpy())  # (B, C)
    features = (
        np.concatenate(rows) if rows else np.zeros((0, card["architecture"]["pooled_feature_dim"]))
    )
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(features.shape[1])])
    frame.insert(0, KEY, ids)
    frame.insert(1, "run", str(run_dir))
    frame.insert(2, "weights_sha256", sha256_file(run_dir / card["weights"]))
    return frame, failed
