"""Per-subject stages that read a T1 image and an atlas from the subject folder.

The cache and radiomics stages share what can go wrong with the two volumes, and report it
with the same reasons: ``volume_unreadable``, ``grid_mismatch``, ``nonfinite_intensities``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from damt.errors import SubjectError
from damt.freesurfer.recon import is_fastsurfer
from damt.stages.store import Stage, SubjectTask
from damt.volumes import VolumeError


class ImageAtlasStage(Stage):
    """A stage whose inputs are ``image`` and ``atlas`` (paths relative to a subject folder).

    ``fastsurfer`` (``{"image", "atlas"}``, optionally ``"mask"``) names the volumes read instead
    for FastSurfer subjects, told apart per subject by their files
    (:func:`damt.freesurfer.recon.is_fastsurfer`). The paths a subject's result was computed from
    are its input files, so they are part of its result key: the settings of the other layout do
    not invalidate it.
    """

    def __init__(self, image: str, atlas: str, fastsurfer: Mapping | None = None):
        self.image, self.atlas = image, atlas
        self.fastsurfer = dict(fastsurfer or {})

    def params(self) -> dict:
        return {"image": self.image, "atlas": self.atlas}

    def volumes_of(self, task: SubjectTask) -> tuple[str, str, str | None]:
        """(image, atlas, mask or None) of the subject's layout, relative to its folder."""
        if self.fastsurfer and is_fastsurfer(task.path):
            fs = self.fastsurfer
            return fs["image"], fs["atlas"], fs.get("mask")
        return self.image, self.atlas, None

    def input_files(self, task: SubjectTask) -> list[Path]:
        return [task.path / rel for rel in self.volumes_of(task) if rel]

    def load_pair(self, task: SubjectTask, loader: Callable):
        """Image and atlas of the subject's layout through ``loader`` (and its mask, or None);
        an unreadable one fails the subject."""
        image, atlas, mask = self.volumes_of(task)
        try:
            return (
                loader(task.path / image),
                loader(task.path / atlas),
                loader(task.path / mask) if mask else None,
            )
        except VolumeError as exc:
            raise SubjectError("volume_unreadable", str(exc)) from exc
