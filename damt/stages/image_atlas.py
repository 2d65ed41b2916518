"""Per-subject stages that read a T1 image and an atlas from the subject folder.

The cache and radiomics stages share what can go wrong with the two volumes, and report it
with the same reasons: ``volume_unreadable``, ``grid_mismatch``, ``nonfinite_intensities``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from damt.stages.store import Stage, SubjectError, SubjectTask
from damt.volumes import VolumeError, grid_difference


def check_pair(image_grid, atlas_grid, image_values: np.ndarray, image_name: str) -> None:
    """Fail the subject when the (shape, affine) grids differ or the image is not finite."""
    diff = grid_difference(image_grid, atlas_grid)
    if diff is not None:
        raise SubjectError("grid_mismatch", f"image and atlas grids differ: {diff}")
    if image_values.dtype.kind == "f" and not np.isfinite(image_values).all():
        bad = int((~np.isfinite(image_values)).sum())
        raise SubjectError("nonfinite_intensities", f"{image_name} has {bad} non-finite voxels")


class ImageAtlasStage(Stage):
    """A stage whose inputs are ``image`` and ``atlas`` (paths relative to a subject folder)."""

    def __init__(self, image: str, atlas: str):
        self.image, self.atlas = image, atlas

    def params(self) -> dict:
        return {"image": self.image, "atlas": self.atlas}

    def input_files(self, task: SubjectTask) -> list[Path]:
        return [task.path / self.image, task.path / self.atlas]

    def load_pair(self, task: SubjectTask, loader: Callable):
        """Both volumes through ``loader``; an unreadable one fails the subject."""
        try:
            return loader(task.path / self.image), loader(task.path / self.atlas)
        except VolumeError as exc:
            raise SubjectError("volume_unreadable", str(exc)) from exc
