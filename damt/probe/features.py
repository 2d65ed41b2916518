"""Frozen-encoder features: each subject's foreground centred on one cohort grid, brain
tokens pooled (padding-independent)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from damt.manifest import KEY
from damt.paths import IMAGE_FILE
from damt.probe.settings import ProbeError


def foreground_box(image: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the nonzero voxels (the cache's background is 0)."""
    nonzero = np.nonzero(np.asarray(image) != 0)
    if not len(nonzero[0]):
        raise ProbeError("the volume holds no foreground voxel")
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in nonzero)


def probe_grid(shapes: Sequence[Sequence[int]], stride: int) -> tuple[int, ...]:
    """One grid for every subject: the largest foreground extent per axis, rounded up to the
    encoder's stride."""
    top = np.max(np.asarray(shapes), axis=0)
    return tuple(int(math.ceil(s / stride) * stride) for s in top)


def centred(image: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """The foreground of ``image`` cropped to its box and centred in a zero volume of ``grid``
    (a box larger than the grid is cropped symmetrically)."""
    crop = np.asarray(image[foreground_box(image)], np.float32)
    out = np.zeros(tuple(grid), np.float32)
    src, dst = [], []
    for size, g in zip(crop.shape, grid, strict=True):
        if size <= g:
            off = (g - size) // 2
            src.append(slice(0, size))
            dst.append(slice(off, off + size))
        else:
            off = (size - g) // 2
            src.append(slice(off, off + g))
            dst.append(slice(0, g))
    out[tuple(dst)] = crop[tuple(src)]
    return out


def foreground_features(encoder, image: np.ndarray, grid: Sequence[int]):
    """Padding-independent pooled features (C,) of one volume: its foreground centred on the
    common ``grid``, then :func:`damt.model.encoder.pooled_features` (the last stage's tokens
    averaged over those whose footprint holds a foreground voxel)."""
    import torch

    from damt.model import pooled_features

    return pooled_features(encoder, torch.from_numpy(centred(image, grid)))[0]


def encoder_features(encoder, cache_dirs: Mapping[str, Path], grid: Sequence[int]) -> pd.DataFrame:
    """:func:`foreground_features` of each subject's cached volume (frozen encoder)."""
    rows = []
    for sid, folder in cache_dirs.items():
        image = np.load(Path(folder) / IMAGE_FILE, mmap_mode="r")
        rows.append([sid, *foreground_features(encoder, image, grid).cpu().numpy().tolist()])
    width = len(rows[0]) - 1 if rows else 0
    return pd.DataFrame(rows, columns=[KEY, *(f"f{i}" for i in range(width))])


def cohort_grid(cache_dirs: Mapping[str, Path], stride: int) -> tuple[int, ...]:
    """:func:`probe_grid` of the probed subjects' cached volumes."""
    shapes = []
    for folder in cache_dirs.values():
        box = foreground_box(np.load(Path(folder) / IMAGE_FILE, mmap_mode="r"))
        shapes.append([b.stop - b.start for b in box])
    return probe_grid(shapes, stride)
