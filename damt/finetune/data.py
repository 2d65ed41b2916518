"""What a unit reads: the subjects of the evaluation split, each subject's volume for a
phenotype task, and its image and structure labels for segmentation (all from the training
cache, the encoder's own input)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from damt.finetune.settings import FinetuneError, Task
from damt.freesurfer.labels import LabelTable
from damt.manifest import KEY, held_out, trains
from damt.paths import ATLAS_FILE, IMAGE_FILE
from damt.probe.features import centred, cohort_grid
from damt.probe.settings import listed

log = logging.getLogger(__name__)


def split_subjects(
    manifest: str | Path, statuses: Sequence[str]
) -> tuple[list[str], list[str], dict[str, Path]]:
    """(training ids, held-out ids, cache folder per id) of the manifest rows with a status in
    ``statuses`` and a cache: the probe's split (held-out subjects are never trained on)."""
    frame = pd.read_parquet(manifest)
    chosen = frame[frame["status"].isin(statuses) & frame["has_cache"].fillna(False)]
    base = Path(manifest).parent
    train = sorted(chosen.loc[trains(chosen), KEY].astype(str))
    test = sorted(chosen.loc[held_out(chosen), KEY].astype(str))
    caches = {str(r.subject_id): base / r.cache_dir for r in chosen.itertuples()}
    return train, test, caches


def _class_of(table: LabelTable) -> dict[int, int]:
    """Atlas label → cache class of the label table."""
    return {int(label): int(cls) for label, cls in zip(table.labels, table.classes, strict=True)}


def structure_lut(task: Task, table: LabelTable) -> np.ndarray:
    """Cache class → target class of a segmentation task (0: background, ``i + 1``: the task's
    ``i``-th label). A label missing from the label table, or two of them merged into one class
    by it, is a :class:`FinetuneError` naming them."""
    index = _class_of(table)
    missing = [label for label in task.labels if label not in index]
    if missing:
        raise FinetuneError(
            f"finetune {task.name}: label(s) {listed(missing)} are not in the cache's label "
            "table (cache.label_table): they cannot be segmented"
        )
    classes = [index[label] for label in task.labels]
    pairs = list(zip(task.labels, classes, strict=True))
    merged = [label for label, c in pairs if classes.count(c) > 1 or c == 0]
    if merged:
        raise FinetuneError(
            f"finetune {task.name}: the label table merges label(s) {listed(merged)} into a "
            "shared or background class: they cannot be told apart"
        )
    lut = np.zeros(table.n_classes, np.int64)
    lut[classes] = np.arange(1, len(classes) + 1)
    return lut


def structure_names(task: Task, table: LabelTable) -> list[str]:
    """The names of a segmentation task's structures (the label table's), in target order."""
    index = _class_of(table)
    return [table.names[index[label]] for label in task.labels]


def with_every_structure(
    task: Task, lut: np.ndarray, caches: Mapping[str, Path], subjects: Sequence[str]
) -> list[str]:
    """The ``subjects`` whose cached atlas holds every structure of ``task``; the others are
    left out of it with a message naming them and their missing structures."""
    kept, missing = [], {}
    for sid in subjects:
        present = np.unique(lut[np.load(Path(caches[sid]) / ATLAS_FILE, mmap_mode="r")])
        lost = sorted(set(range(1, len(task.labels) + 1)) - set(present.tolist()))
        if lost:
            missing[sid] = [task.labels[i - 1] for i in lost]
        else:
            kept.append(sid)
    if missing:
        log.warning(
            "finetune %s: %d subject(s) left out, their atlas lacks structures: %s",
            task.name, len(missing),
            listed([f"{sid} (labels {listed(lab, 5)})" for sid, lab in missing.items()]),
        )  # fmt: skip
    return kept


class PhenotypeVolumes:
    """Each subject's cached volume with its foreground centred on one grid for every subject
    of the task (the probe's), average-pooled by ``downsample``: (1, D, H, W) float32."""

    def __init__(
        self, caches: Mapping[str, Path], subjects: Sequence[str], stride: int, downsample: int
    ):
        self.caches, self.downsample = caches, downsample
        # The grid, once pooled, stays a multiple of the encoder's stride.
        self.grid = cohort_grid({s: caches[s] for s in subjects}, stride * downsample)

    def __call__(self, subject: str) -> np.ndarray:
        image = centred(np.load(Path(self.caches[subject]) / IMAGE_FILE, mmap_mode="r"), self.grid)
        return pooled(image, self.downsample)[None]


def pooled(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` (float32) averaged over ``factor``³ blocks (a trailing partial block dropped)."""
    image = np.asarray(image, np.float32)
    if factor == 1:
        return image
    d, h, w = (s // factor for s in image.shape)
    blocks = image[: d * factor, : h * factor, : w * factor]
    return blocks.reshape(d, factor, h, factor, w, factor).mean(axis=(1, 3, 5))


def segmentation_pair(cache: Path, lut: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """A subject's cached image (1, D, H, W) float32 and its target classes (1, D, H, W) int64,
    both reduced by ``factor`` (the image averaged as :func:`pooled`, the labels of each block's
    first voxel)."""
    image = pooled(np.load(Path(cache) / IMAGE_FILE), factor)
    labels = lut[np.load(Path(cache) / ATLAS_FILE)]
    labels = labels[::factor, ::factor, ::factor][
        : image.shape[0], : image.shape[1], : image.shape[2]
    ]
    return image[None], labels[None]
