"""Random 3-D augmentation of the training views (``pretrain.augment``), with MONAI's transforms.

Each view (both global crops, the local crop before its resize) goes through the switched-on
transforms in a fixed order: elastic deformation (image trilinear, atlas nearest: one
displacement field for both), bias field, gamma contrast, Gaussian noise. The randomness comes
from a generator the caller seeds per (seed, epoch, subject), so a view does not depend on the
worker that draws it, on ``num_workers``, or on a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import (
    Compose,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandGaussianNoised,
)

IMAGE, ATLAS = "image", "atlas"
# The transforms in the order they run; each is one key of pretrain.augment.
AUGMENTATIONS = ("elastic", "bias_field", "contrast", "noise")


def _range(name: str, values, low: float | None = None, positive: bool = False) -> tuple:
    lo, hi = (float(v) for v in values)
    if lo > hi:
        raise ValueError(f"pretrain.augment.{name}: [{lo}, {hi}] is not a range (low > high)")
    if low is not None and lo < low:
        raise ValueError(f"pretrain.augment.{name}: {lo} is below {low}")
    if positive and lo <= 0:
        raise ValueError(f"pretrain.augment.{name}: values must be positive, got {lo}")
    return lo, hi


@dataclass(frozen=True)
class AugmentSpec:
    """Probabilities and ranges of ``pretrain.augment`` (all probabilities 0: no augmentation)."""

    elastic_prob: float = 0.0
    elastic_sigma: tuple[float, float] = (5.0, 8.0)
    elastic_magnitude: tuple[float, float] = (20.0, 60.0)
    bias_field_prob: float = 0.0
    bias_field_degree: int = 3
    bias_field_coeff: tuple[float, float] = (0.0, 0.1)
    contrast_prob: float = 0.0
    contrast_gamma: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.0
    noise_std: float = 0.05

    @classmethod
    def from_config(cls, augment: dict) -> AugmentSpec:
        """Check the ranges of ``pretrain.augment`` (the schema has checked types and
        probabilities); errors name the key."""
        e, b, c, n = (augment[k] for k in AUGMENTATIONS)
        return cls(
            elastic_prob=e["prob"],
            elastic_sigma=_range("elastic.sigma", e["sigma"], positive=True),
            elastic_magnitude=_range("elastic.magnitude", e["magnitude"], low=0.0),
            bias_field_prob=b["prob"],
            bias_field_degree=b["degree"],
            bias_field_coeff=_range("bias_field.coeff", b["coeff"]),
            contrast_prob=c["prob"],
            contrast_gamma=_range("contrast.gamma", c["gamma"], positive=True),
            noise_prob=n["prob"],
            noise_std=n["std"],
        )

    @property
    def enabled(self) -> tuple[str, ...]:
        """The augmentations with a probability above 0."""
        return tuple(a for a in AUGMENTATIONS if getattr(self, f"{a}_prob") > 0)


class Augmenter:
    """The switched-on transforms of an :class:`AugmentSpec`, as one call per view."""

    def __init__(self, spec: AugmentSpec, only: tuple[str, ...] | None = None) -> None:
        """``only``: a subset of the enabled augmentations (the loader benchmark times each)."""
        chosen = [a for a in spec.enabled if only is None or a in only]
        transforms = {
            "elastic": lambda: Rand3DElasticd(
                keys=[IMAGE, ATLAS],
                sigma_range=spec.elastic_sigma,
                magnitude_range=spec.elastic_magnitude,
                prob=spec.elastic_prob,
                mode=["bilinear", "nearest"],
                # Outside the crop is background, as crop() pads it.
                padding_mode="zeros",
                allow_missing_keys=True,
            ),
            "bias_field": lambda: RandBiasFieldd(
                keys=[IMAGE],
                degree=spec.bias_field_degree,
                coeff_range=spec.bias_field_coeff,
                prob=spec.bias_field_prob,
            ),
            "contrast": lambda: RandAdjustContrastd(
                keys=[IMAGE], gamma=spec.contrast_gamma, prob=spec.contrast_prob
            ),
            "noise": lambda: RandGaussianNoised(
                keys=[IMAGE], std=spec.noise_std, prob=spec.noise_prob
            ),
        }
        self.names = tuple(chosen)
        self.compose = Compose([transforms[a]() for a in chosen]) if chosen else None

    def __call__(
        self, image: np.ndarray, atlas: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One view's ``image`` (D, H, W) and, when given, its ``atlas`` on the same grid,
        transformed with randomness from ``rng``; image float32, atlas in its own dtype."""
        if self.compose is None:
            return image, atlas
        # MONAI draws from its own RandomState; seeding it from rng keeps one random stream.
        self.compose.set_random_state(seed=int(rng.integers(2**32 - 1)))
        item = {IMAGE: torch.from_numpy(np.asarray(image, dtype=np.float32))[None]}
        if atlas is not None:
            item[ATLAS] = torch.from_numpy(np.asarray(atlas, dtype=np.float32))[None]
        # One thread, as in a DataLoader worker: torch's CPU kernels (the field's smoothing,
        # the resampling) sum in an order that depends on the thread count, and a view must
        # not depend on num_workers (an operational setting) even in its last bit.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out = self.compose(item)
        finally:
            torch.set_num_threads(threads)
        image_out = np.asarray(torch.as_tensor(out[IMAGE]).as_subclass(torch.Tensor)[0])
        if atlas is None:
            return image_out.astype(np.float32, copy=False), None
        atlas_out = torch.as_tensor(out[ATLAS]).as_subclass(torch.Tensor)[0]
        return image_out.astype(np.float32, copy=False), np.asarray(
            atlas_out.round().numpy().astype(atlas.dtype)
        )
