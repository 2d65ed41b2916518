"""Small synthetic label/image volumes for bad-input tests (fast, any geometry)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from damt.demo.anatomy import vox2ras


def blob_volumes(shape=(40, 40, 40), seed: int = 0):
    """(image uint8, labels int32): a sphere of WM (2) with a cortex-like shell (1001) and a
    hippocampus-like blob (17), with noise, on a conformed-like LIA grid."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    r = np.sqrt(((idx - centre[:, None, None, None]) ** 2).sum(0))
    radius = min(shape) * 0.4
    labels = np.zeros(shape, np.int32)
    labels[r < radius] = 1001
    labels[r < radius - 3] = 2
    labels[
        (np.abs(idx[0] - centre[0] - 4) < 3)
        & (np.abs(idx[1] - centre[1]) < 4)
        & (np.abs(idx[2] - centre[2]) < 5)
    ] = 17
    means = {0: 0.0, 2: 110.0, 1001: 75.0, 17: 85.0}
    image = np.zeros(shape, np.float32)
    for lab, m in means.items():
        image[labels == lab] = m
    image[labels > 0] += rng.normal(0, 6, size=int((labels > 0).sum()))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def save_mgz(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if affine is None:
        affine = vox2ras(np.zeros(3))
    nib.save(nib.MGHImage(data, affine), path)
    return path


def make_subject(root: Path, name: str = "s1", image=None, labels=None, affine=None) -> Path:
    """A subject folder with mri/brainmask.mgz and mri/aparc+aseg.mgz."""
    if image is None or labels is None:
        image, labels = blob_volumes()
    folder = root / name
    save_mgz(image, folder / "mri" / "brainmask.mgz", affine)
    save_mgz(labels, folder / "mri" / "aparc+aseg.mgz", affine)
    return folder
