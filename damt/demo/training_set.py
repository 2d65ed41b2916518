"""A synthetic training set in the trainer's input format (docs/contracts.md), for tests and
benchmarks: no FreeSurfer, NIfTI or SimpleITK involved.

Brain-like volumes (a noisy ellipsoid with a darker core and a brighter rim), an atlas that splits
the brain into classes by depth and octant, a manifest with pass/warn/fail subjects, z-scored
feature tables with missing values, and a label table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from damt.features import FEATURE_GROUPS
from damt.paths import normalized_table_file


@dataclass
class TrainingFiles:
    root: Path
    manifest: Path
    tables_dir: Path
    label_table: Path
    subjects: list[str]  # the subjects that train (pass/warn with a cache)
    n_classes: int


def brain_volume(
    shape: tuple[int, int, int], n_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A float16 image in [0, 1] and a uint8 atlas with classes 0..n_classes-1."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    axes = rng.uniform(0.6, 0.85, size=3)
    r = np.sqrt(sum((g / a) ** 2 for g, a in zip(grid, axes, strict=True)))
    inside = r < 1
    image = np.where(inside, 0.4 + 0.5 * np.clip(r, 0, 1) ** 2, 0.0)
    image = image + inside * rng.normal(0, 0.03, size=shape)
    image = np.clip(image, 0, 1).astype(np.float16)
    # Classes: depth shells × octant sign of the first axis, all inside the brain.
    shell = np.minimum((r * 2).astype(int), 1)
    side = (grid[0] > 0).astype(int)
    octant = (grid[1] > 0).astype(int)
    atlas = 1 + (shell * 4 + side * 2 + octant) % (n_classes - 1)
    atlas = np.where(inside, atlas, 0).astype(np.uint8)
    return image, atlas


def write_training_set(
    root: Path,
    n_subjects: int = 6,
    shape: tuple[int, int, int] = (72, 80, 72),
    n_classes: int = 6,
    widths: tuple[int, int, int] = (7, 5, 4),
    seed: int = 0,
) -> TrainingFiles:
    """Write cache, manifest, z tables and label table under ``root``.

    Besides the ``n_subjects`` training subjects the manifest holds one ``fail`` subject and one
    ``pass`` subject without a cache (neither trains). The tables leave values missing: scattered
    NaN, one subject with an all-NaN morphometry row, one subject absent from radiomics.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"sub-{i:02d}" for i in range(n_subjects)]
    rows = []
    for i, sid in enumerate(ids):
        cache = root / "subjects" / sid / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        image, atlas = brain_volume(shape, n_classes, rng)
        np.save(cache / "image.npy", image)
        np.save(cache / "atlas.npy", atlas)
        rows.append((sid, "warn" if i == 1 else "pass", True, f"subjects/{sid}/cache"))
    rows.append(("sub-fail", "fail", True, "subjects/sub-fail/cache"))
    rows.append(("sub-nocache", "pass", False, None))
    manifest = pd.DataFrame(rows, columns=["subject_id", "status", "has_cache", "cache_dir"])
    manifest["reasons"] = [[] for _ in rows]
    manifest.to_parquet(root / "manifest.parquet")

    tables = root / "features"
    tables.mkdir(exist_ok=True)
    all_ids = [*ids, "sub-fail", "sub-nocache"]
    for name, width in zip(FEATURE_GROUPS, widths, strict=True):
        values = rng.normal(size=(len(all_ids), width)).astype(np.float32)
        values[rng.random(values.shape) < 0.1] = np.nan
        keep = list(range(len(all_ids)))
        if name.startswith("morphometry"):
            values[2] = np.nan
        else:
            keep.remove(3)
        table = pd.DataFrame(values[keep], columns=[f"{name}_{j}" for j in range(width)])
        table.insert(0, "subject_id", [all_ids[k] for k in keep])
        table.to_parquet(tables / normalized_table_file(name))

    labels = pd.DataFrame(
        {
            "index": range(n_classes),
            "label": [0, *range(2, 2 + n_classes - 1)],
            "name": ["Unknown", *[f"region-{k}" for k in range(1, n_classes)]],
        }
    )
    labels.to_csv(root / "labels.tsv", sep="\t", index=False)
    return TrainingFiles(
        root, root / "manifest.parquet", tables, root / "labels.tsv", ids, n_classes
    )
