"""Training data: the manifest, the training cache, the z-scored tables and the label table.

Follows docs/contracts.md. Subjects with status ``pass`` or ``warn`` and a cache train, except
the held-out evaluation subjects (manifest column ``split``). A subject
missing from a feature table gets a NaN row; NaN targets are masked out of the losses.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, DistributedSampler

from damt.config import schema_defaults
from damt.features import TASK_FEATURE_GROUPS
from damt.freesurfer.labels import read_label_table
from damt.io import HASH_CHARS
from damt.manifest import HOLDOUT, KEY, held_out, trains
from damt.model.spec import ViewSpec
from damt.paths import ATLAS_FILE, IMAGE_FILE
from damt.split import scaling_subset
from damt.training.augment import Augmenter
from damt.training.settings import AugmentSpec
from damt.training.views import make_views

# Appended to (seed, epoch, index): the augmentation's random stream, apart from the crops', so
# switching augmentation on leaves the crops, rotations and masks as they were.
AUGMENT_STREAM = 1


def read_feature_table(path: str | Path) -> pd.DataFrame:
    """A z-scored feature table indexed by ``subject_id``, float32, NaN where missing."""
    table = pd.read_parquet(path)
    if KEY not in table.columns:
        raise ValueError(f"feature table {path} has no '{KEY}' column")
    table = table.set_index(KEY)
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()][0]
        raise ValueError(f"feature table {path}: subject {dup!r} appears more than once")
    bad = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise ValueError(f"feature table {path}: non-numeric columns {bad[:5]}")
    values = table.to_numpy(dtype=np.float32, na_value=np.nan)
    if np.isinf(values).any():
        raise ValueError(f"feature table {path} holds infinite values")
    return pd.DataFrame(values, index=table.index, columns=table.columns)


@dataclass
class TrainingData:
    """The subjects that train, where their cache is, and their aligned regression targets."""

    subjects: list[str]
    cache_dirs: list[Path]
    n_classes: int
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def width(self, task: str) -> int:
        """Width of a regression target (0 when its table was not loaded)."""
        return self.targets[task].shape[1] if task in self.targets else 0

    def select(self, subjects: list[str]) -> TrainingData:
        """The same data for ``subjects`` only (in their order here)."""
        keep = set(subjects)
        rows = [i for i, s in enumerate(self.subjects) if s in keep]
        return TrainingData(
            [self.subjects[i] for i in rows],
            [self.cache_dirs[i] for i in rows],
            self.n_classes,
            {task: values[rows] for task, values in self.targets.items()},
            {**self.summary, "subjects": len(rows)},
        )


def _aligned(table: pd.DataFrame, subjects: list[str]) -> np.ndarray:
    return table.reindex(subjects).to_numpy(dtype=np.float32, na_value=np.nan)


def holdout_summary(manifest: pd.DataFrame) -> dict:
    """The held-out evaluation subjects the run never saw: how many, and a hash of their ids
    (the manifest's ``split`` column lists them)."""
    if "split" not in manifest.columns:
        return {"held_out_subjects": 0, "held_out_ids_sha256": None}
    held = sorted(manifest.loc[manifest["split"] == HOLDOUT, KEY].astype(str))
    return {
        "held_out_subjects": len(held),
        "held_out_ids_sha256": hashlib.sha256("\n".join(held).encode()).hexdigest()[:HASH_CHARS],
    }


def load_training_data(
    manifest: str | Path,
    label_table: str | Path,
    tables: dict[str, str | Path | None],
    subjects: int | None = None,
    holdout: bool = False,
) -> TrainingData:
    """Read the manifest and the tables named in ``tables`` (keys: feature groups); with
    ``subjects``, train on that many (:func:`damt.split.scaling_subset`, data scaling). With
    ``holdout``, the held-out evaluation subjects instead of the training ones (none is no
    error then: the manifest may hold nobody out).

    A task's target is its feature groups (:data:`damt.features.TASK_FEATURE_GROUPS`) side by
    side, built when all of them are given (morphometry: global and local). A relative
    ``cache_dir`` is relative to the manifest's folder (the workflow's ``outdir``).
    """
    manifest = Path(manifest)
    df = pd.read_parquet(manifest)
    missing = {"subject_id", "status", "has_cache", "cache_dir"} - set(df.columns)
    if missing:
        raise ValueError(f"manifest {manifest} lacks columns {sorted(missing)}")
    used = df[(held_out if holdout else trains)(df)].sort_values("subject_id")
    if used.empty and not holdout:
        raise ValueError(
            f"manifest {manifest}: no subject has status pass/warn and a cache "
            f"({len(df)} rows, statuses {df['status'].value_counts().to_dict()})"
        )
    size = subjects
    chosen = set(scaling_subset(used["subject_id"].astype(str), size))
    used = used[used["subject_id"].astype(str).isin(chosen)]
    subjects = used["subject_id"].astype(str).tolist()
    cache_dirs = [
        p if p.is_absolute() else manifest.parent / p for p in map(Path, used["cache_dir"])
    ]
    data = TrainingData(subjects, cache_dirs, read_label_table(label_table).n_classes)
    data.summary = {
        "manifest": str(manifest),
        "subjects": len(subjects),
        "data_scaling_subset": size,  # pretrain.subset_size (None: every training subject)
        "subjects_by_status": used["status"].value_counts().sort_index().to_dict(),
        "manifest_rows": len(df),
        "atlas_classes": data.n_classes,
        "evaluation_split": holdout_summary(df),
    }
    loaded = {k: read_feature_table(v) for k, v in tables.items() if v is not None}
    for task, groups in TASK_FEATURE_GROUPS.items():
        if all(g in loaded for g in groups):
            data.targets[task] = np.concatenate(
                [_aligned(loaded[g], subjects) for g in groups], axis=1
            )
    for task, values in data.targets.items():
        finite = np.isfinite(values)
        data.summary[task] = {
            "features": values.shape[1],
            "subjects_without_values": int((~finite.any(axis=1)).sum()),
            "missing_fraction": round(float(1 - finite.mean()), 6) if values.size else 1.0,
        }
    return data


class EpochSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` that can start an epoch after its first
    samples (:meth:`start_at`): the resume of an epoch a stop signal cut short."""

    def __init__(self, dataset: Dataset, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.skip = 0

    def start_at(self, samples: int) -> None:
        """Leave out this rank's first ``samples`` samples of the epoch (0: the whole epoch)."""
        self.skip = samples

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class PretrainDataset(Dataset):
    """Views and targets of one subject per item, from the training cache.

    Augmentation randomness comes from ``(seed, epoch, index)`` alone, so an item is the same
    whichever worker or rank draws it, and a resumed run sees the same views.
    """

    def __init__(
        self, data: TrainingData, spec: ViewSpec, seed: int, augment: AugmentSpec | None = None
    ) -> None:
        self.data = data
        self.spec = spec
        self.seed = seed
        self.epoch = 0
        self.augmenter = Augmenter(
            augment or AugmentSpec.from_config(schema_defaults("pretrain")["augment"])
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before creating the iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data.subjects)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sid, folder = self.data.subjects[index], self.data.cache_dirs[index]
        try:
            image = np.load(folder / IMAGE_FILE, mmap_mode="r")
            atlas = np.load(folder / ATLAS_FILE, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ValueError(f"subject {sid}: cannot read its cache in {folder}: {exc}") from exc
        if image.shape != atlas.shape or image.ndim != 3:
            raise ValueError(
                f"subject {sid}: cache image {image.shape} and atlas {atlas.shape} differ"
            )
        return image, atlas

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, atlas = self._load(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        augment = None
        if self.augmenter.names:
            aug_rng = np.random.default_rng([self.seed, self.epoch, index, AUGMENT_STREAM])

            def augment(block, block_atlas):
                return self.augmenter(block, block_atlas, aug_rng)

        item = make_views(image, atlas, rng, self.spec, augment)
        top = max(int(item["global_atlas"].max()), int(item["local_atlas"].max()))
        if top >= self.data.n_classes:
            raise ValueError(
                f"subject {self.data.subjects[index]}: atlas class {top} is outside the label "
                f"table's 0..{self.data.n_classes - 1}"
            )
        for task, values in self.data.targets.items():
            item[task] = torch.tensor(values[index])
        item["index"] = torch.tensor(index)
        return item
