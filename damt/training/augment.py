"""Random 3-D augmentation of the training views (``pretrain.augment``), with MONAI's transforms.

Each view (both global crops, the local crop before its resize) goes through the switched-on
transforms in a fixed order: elastic deformation (image trilinear, atlas nearest: one
displacement field for both), bias field, gamma contrast, Gaussian noise. The randomness comes
from a generator the caller seeds per (seed, epoch, subject), so a view does not depend on the
worker that draws it, on ``num_workers``, or on a resume.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandGaussianNoised,
    RandomizableTransform,
)

from damt.training.settings import AugmentSpec

IMAGE, ATLAS = "image", "atlas"


class CoarseElasticd(RandomizableTransform, MapTransform):
    """MONAI's ``Rand3DElasticd`` deformation, its random field drawn on a coarser grid.

    As in ``Rand3DElastic``: a displacement per voxel and axis, uniform in [-1, 1], smoothed by
    a Gaussian of ``sigma`` voxels and multiplied by ``magnitude`` (both drawn from their
    ranges). Smoothing the dense field is most of ``Rand3DElastic``'s cost (3 of its 4 s per
    128³ crop on one thread of a 2-core VM; bench/RESULTS.md, "Augmentation"), and after
    smoothing by ``sigma`` the field holds nothing finer than a few voxels: here the noise lives
    on a grid ``f`` = ⌊sigma / 2⌋ times coarser, is smoothed by sigma / f there (at least two
    coarse cells), scaled by f^-3/2 (smoothed white noise on cells f³ times larger has f^3/2
    times the amplitude, so the field keeps Rand3DElastic's statistics) and resized trilinearly
    to the voxel grid. Keys are warped with one field (``modes`` per key: ``bilinear`` or
    ``nearest``), zeros outside.
    """

    def __init__(self, keys, sigma_range, magnitude_range, prob, modes, allow_missing_keys=False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.sigma_range, self.magnitude_range = sigma_range, magnitude_range
        self.modes = dict(zip(self.keys, modes, strict=True))

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return out
        sigma = self.R.uniform(*self.sigma_range)
        magnitude = self.R.uniform(*self.magnitude_range)
        shape = out[self.first_key(out)].shape[1:]
        factor = max(1, int(sigma // 2))
        coarse = [-(-n // factor) + 1 for n in shape]
        noise = torch.from_numpy(self.R.uniform(-1.0, 1.0, [1, 3, *coarse]).astype(np.float32))
        field = GaussianFilter(3, sigma / factor)(noise) * (magnitude * factor**-1.5)
        field = F.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=True)[0]
        # grid_sample's grid: (x, y, z) = (last, middle, first axis) in [-1, 1] at the corners.
        axes = [torch.linspace(-1.0, 1.0, n) for n in shape]
        base = torch.stack(torch.meshgrid(*axes, indexing="ij"))
        scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape]).view(3, 1, 1, 1)
        grid = (base + field * scale).flip(0).permute(1, 2, 3, 0)[None]
        for key in self.key_iterator(out):
            x = torch.as_tensor(out[key]).as_subclass(torch.Tensor).float()[None]
            out[key] = F.grid_sample(
                x, grid, mode=self.modes[key], padding_mode="zeros", align_corners=True
            )[0]
        return out


class Augmenter:
    """The switched-on transforms of an :class:`AugmentSpec`, as one call per view."""

    def __init__(self, spec: AugmentSpec) -> None:
        chosen = spec.enabled
        transforms = {
            "elastic": lambda: CoarseElasticd(
                keys=[IMAGE, ATLAS],
                sigma_range=spec.elastic_sigma,
                magnitude_range=spec.elastic_magnitude,
                prob=spec.elastic_prob,
                modes=["bilinear", "nearest"],
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
