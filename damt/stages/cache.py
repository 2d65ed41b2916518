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


# The ``cache`` keys :func:`preprocessing_card` reads (the pretrain rule passes exactly these).
PREPROCESSING_KEYS = ("image", "fastsurfer", "spacing", "min_size", "percentiles", "orientation")
# The model card's ``preprocessing`` format: a newer damt reads every older version.
PREPROCESSING_VERSION = 1
# Interpolation by key: the image is resampled smoothly, label maps by nearest neighbour.
_MODES = {"image": "bilinear", "atlas": "nearest"}


def preprocessing_card(settings: CacheSettings, cache: Mapping) -> dict:
    """What turns a T1 into the encoder's input, as data (the model card's ``preprocessing``).

    ``cache`` is the config's ``cache`` section (the input volumes); every step is the chain of
    :func:`monai_chain`, in its order, after :func:`masked`.
    """
    lo, hi = settings.percentiles
    return {
        "version": PREPROCESSING_VERSION,
        "input": {
            "freesurfer": {"image": cache["image"], "mask": None},
            "fastsurfer": {k: cache["fastsurfer"][k] for k in ("image", "mask")},
        },
        "masking": "voxels where the mask is 0 are set to 0 (only with a mask)",
        "orientation": settings.orientation,
        "crop_foreground": "to the bounding box of the image's voxels above 0",
        "spacing_mm": [settings.spacing] * 3,
        "interpolation": _MODES["image"],
        "pad_to_min_size": [settings.min_size] * 3,
        "intensity": {
            "percentiles": [lo, hi],
            "of": "every voxel of the resampled volume, background included",
            "output_range": [0.0, 1.0],
            "clip": True,
        },
        "dtype": "float16",
        "channels": 1,
    }


def settings_from_card(preprocessing: Mapping | None) -> CacheSettings:
    """The settings a model card's ``preprocessing`` records (any version this damt knows)."""
    if not preprocessing:
        raise ValueError(
            "the model card has no preprocessing (its run was trained before damt recorded "
            "it): build CacheSettings from the workflow's `cache` section instead "
            "(docs/using-weights.md)"
        )
    version = preprocessing.get("version")
    if version != PREPROCESSING_VERSION:
        raise ValueError(
            f"the model card's preprocessing is version {version}; this damt reads version "
            f"{PREPROCESSING_VERSION}: update damt"
        )
    lo, hi = preprocessing["intensity"]["percentiles"]
    return CacheSettings(
        preprocessing["spacing_mm"][0],
        preprocessing["pad_to_min_size"][0],
        (lo, hi),
        preprocessing["orientation"],
    )


def monai_chain(settings: CacheSettings, keys: tuple[str, ...] = ("image", "atlas")):
    """The MONAI dictionary transforms applied to channel-first tensors under ``keys`` (the
    image first; the others are label maps).

    Also used by ``bench/loader.py`` to time the original per-sample preprocessing and by
    ``damt.downstream.preprocess``.
    """
    from monai import transforms as T

    lo, hi = settings.percentiles
    keys = list(keys)
    return T.Compose(
        [
            T.Orientationd(keys=keys, axcodes=settings.orientation, labels=None),
            T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
            T.Spacingd(
                keys=keys,
                pixdim=[settings.spacing] * 3,
                mode=tuple(_MODES.get(k, "nearest") for k in keys),
                dtype=np.float32,
            ),
            T.SpatialPadd(keys=keys, spatial_size=[settings.min_size] * 3),
            T.ScaleIntensityRangePercentilesd(
                keys="image", lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True
            ),
        ]
    )


def masked(image: Volume, mask: Volume | None) -> Volume:
    """``image`` with the voxels outside ``mask`` set to 0 (``image`` itself without a mask)."""
    if mask is None:
        return image
    diff = grid_difference(image.grid, mask.grid)
    if diff is not None:
        raise SubjectError("grid_mismatch", f"image and mask grids differ: {diff}")
    return replace(image, data=np.where(mask.data > 0, image.data, 0).astype(image.data.dtype))


def to_metatensor(volume: Volume):
    """A channel-first MONAI MetaTensor of ``volume`` (float32) carrying its affine."""
    import torch
    from monai.data import MetaTensor

    return MetaTensor(
        torch.from_numpy(volume.data.astype(np.float32))[None],
        affine=torch.from_numpy(volume.affine),
    )


def preprocess(
    image: Volume, atlas: Volume, settings: CacheSettings, table: LabelTable
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Run the chain once: (float16 image, class-index atlas, unknown labels → voxel count)."""
    out = monai_chain(settings)({"image": to_metatensor(image), "atlas": to_metatensor(atlas)})
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


def check_nonempty(image: Volume, image_name: str) -> None:
    """Fail the subject when its (masked) image has no voxel above 0: nothing to crop to."""
    if not (image.data > 0).any():
        raise SubjectError("empty_image", f"{image_name} has no voxel above 0")


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
        image: str,
        atlas: str,
        fastsurfer: Mapping | None,
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
        image = masked(image, mask)
        check_nonempty(image, image_name)
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
