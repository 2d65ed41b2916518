"""The training cache: each subject's volumes preprocessed once, stored memory-mappable.

The preprocessing is the original DAMT chain of MONAI transforms (crop to foreground, resample,
pad, percentile scaling, atlas remapping), plus a reorientation to RAS so that every subject's
voxel axes mean the same anatomical directions. The original ran it on every volume at every
epoch; here it runs once per subject and the trainer reads ``image.npy`` (float16) and
``atlas.npy`` (class indices) with ``mmap_mode="r"``.

The stage also records the per-volume QC measures the manifest needs (grid agreement, voxel
size, shape, intensity percentiles, labels present/unexpected), since it reads both volumes. It
takes no QC setting: the checks on these measures (e.g. ``qc.expected_labels``) run in the QC
stage, so editing them never recomputes a cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from damt.errors import SubjectError
from damt.freesurfer.labels import LabelTable, read_label_table
from damt.io import sha256_file
from damt.paths import ATLAS_FILE, IMAGE_FILE
from damt.results import OK
from damt.stages.image_atlas import ImageAtlasStage
from damt.stages.store import SubjectResult, SubjectTask
from damt.volumes import Volume, check_pair, grid_difference, load_volume


@dataclass(frozen=True)
class CacheSettings:
    """Preprocessing settings (all part of the cache key)."""

    spacing: float
    min_size: int
    percentiles: tuple[float, float]
    orientation: str

    @classmethod
    def from_config(cls, cache: Mapping) -> CacheSettings:
        """From the validated ``cache`` section."""
        lo, hi = cache["percentiles"]
        return cls(cache["spacing"], cache["min_size"], (lo, hi), cache["orientation"])


def monai_chain(settings: CacheSettings):
    """The MONAI dictionary transforms applied to ``{"image", "atlas"}`` channel-first tensors.

    Also used by ``bench/loader.py`` to time the original per-sample preprocessing.
    """
    from monai import transforms as T

    lo, hi = settings.percentiles
    return T.Compose(
        [
            T.Orientationd(keys=["image", "atlas"], axcodes=settings.orientation, labels=None),
            T.CropForegroundd(keys=["image", "atlas"], source_key="image", allow_smaller=True),
            T.Spacingd(
                keys=["image", "atlas"],
                pixdim=[settings.spacing] * 3,
                mode=("bilinear", "nearest"),
                dtype=np.float32,
            ),
            T.SpatialPadd(keys=["image", "atlas"], spatial_size=[settings.min_size] * 3),
            T.ScaleIntensityRangePercentilesd(
                keys="image", lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True
            ),
        ]
    )


def to_metatensors(image: Volume, atlas: Volume) -> dict:
    """Channel-first MONAI MetaTensors carrying each volume's affine."""
    import torch
    from monai.data import MetaTensor

    return {
        "image": MetaTensor(
            torch.from_numpy(image.data.astype(np.float32))[None],
            affine=torch.from_numpy(image.affine),
        ),
        "atlas": MetaTensor(
            torch.from_numpy(atlas.data.astype(np.float32))[None],
            affine=torch.from_numpy(atlas.affine),
        ),
    }


def preprocess(
    image: Volume, atlas: Volume, settings: CacheSettings, table: LabelTable
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Run the chain once: (float16 image, class-index atlas, unknown labels → voxel count)."""
    out = monai_chain(settings)(to_metatensors(image, atlas))
    img = np.asarray(out["image"][0].numpy(), dtype=np.float16)
    classes, unknown = table.remap(np.asarray(out["atlas"][0].numpy()))
    return np.ascontiguousarray(img), np.ascontiguousarray(classes), unknown


def volume_qc(image: Volume, atlas: Volume, table: LabelTable) -> dict:
    """Per-volume QC measures: geometry, intensity percentiles, labels present and unexpected."""
    labels, counts = np.unique(atlas.data, return_counts=True)
    present = {int(lab): int(c) for lab, c in zip(labels, counts, strict=True) if lab != 0}
    foreground = image.data[atlas.data > 0]
    pct = (
        np.percentile(foreground, [1, 50, 99]).round(3).tolist()
        if foreground.size
        else [float("nan")] * 3
    )
    known = set(table.labels.tolist())
    return {
        "shape": list(image.data.shape),
        "voxel_size": [round(v, 5) for v in image.spacing],
        "image_dtype": str(image.data.dtype),
        "intensity_p1_p50_p99": pct,
        "intensity_max": float(image.data.max()),
        "n_labels": len(present),
        "labels_present": sorted(present),
        "unexpected_labels": {str(k): v for k, v in present.items() if k not in known},
        "foreground_voxels": int(foreground.size),
    }


def check_labels(labels: np.ndarray, atlas_name: str) -> None:
    """Fail the subject when its atlas holds negative labels (no class can hold them)."""
    values = np.rint(labels) if labels.dtype.kind == "f" else labels
    negative = values < 0
    if negative.any():
        ids = np.unique(values[negative]).astype(np.int64).tolist()
        shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
        raise SubjectError(
            "negative_labels",
            f"{atlas_name} has {int(negative.sum())} voxels with negative labels ({shown})",
        )


class CacheStage(ImageAtlasStage):
    """Per-subject training cache (and volume QC measures)."""

    name = "cache"
    version = "2"  # 2: info lists labels_present (expected labels are checked by the QC stage)

    def __init__(
        self,
        label_table: str | Path,
        settings: CacheSettings,
        image: str = "mri/brainmask.mgz",
        atlas: str = "mri/aparc+aseg.mgz",
        fastsurfer: Mapping | None = None,
    ):
        self.label_table_path = str(label_table)
        self.label_table_hash = sha256_file(label_table)
        self.settings = settings
        super().__init__(image, atlas, fastsurfer)
        self.table: LabelTable | None = None

    def setup(self) -> None:
        self.table = read_label_table(self.label_table_path)

    def params(self) -> dict:
        return {
            **super().params(),
            "settings": self.settings.__dict__,
            "label_table": self.label_table_hash,
        }

    def compute(self, task: SubjectTask, workdir: Path) -> SubjectResult:
        assert self.table is not None, "setup() reads the label table"
        image_name, atlas_name, _ = self.volumes_of(task)
        image, atlas, mask = self.load_pair(task, load_volume)
        check_pair(image.grid, atlas.grid, image.data, image_name)
        if mask is not None:
            diff = grid_difference(image.grid, mask.grid)
            if diff is not None:
                raise SubjectError("grid_mismatch", f"image and mask grids differ: {diff}")
            image = replace(
                image, data=np.where(mask.data > 0, image.data, 0).astype(image.data.dtype)
            )
        if not (image.data > 0).any():
            raise SubjectError("empty_image", f"{image_name} has no voxel above 0")
        check_labels(atlas.data, atlas_name)
        qc = volume_qc(image, atlas, self.table)
        qc["n_frames"] = {image_name: image.n_frames, atlas_name: atlas.n_frames}
        img, classes, unknown = preprocess(image, atlas, self.settings, self.table)
        np.save(workdir / IMAGE_FILE, img)
        np.save(workdir / ATLAS_FILE, classes)
        qc.update(
            {
                "cache_shape": list(img.shape),
                "cache_unknown_labels": {str(k): v for k, v in unknown.items()},
                "n_classes": self.table.n_classes,
            }
        )
        return SubjectResult(
            task.subject_id, OK, outputs={"image": IMAGE_FILE, "atlas": ATLAS_FILE}, info=qc
        )


def stage_from_settings(cache: Mapping) -> CacheStage:
    """The cache stage with the config's ``cache`` section."""
    return CacheStage(
        cache["label_table"],
        CacheSettings.from_config(cache),
        cache["image"],
        cache["atlas"],
        cache["fastsurfer"],
    )
