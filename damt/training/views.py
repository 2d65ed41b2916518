"""The views of one subject: two global crops, a local crop with its location, rotations, masks.

Everything here works on plain arrays, independent of where the volume comes from (the training
cache, or a MONAI preprocessing chain in a benchmark), and returns plain ``torch.Tensor`` s:
MONAI ``MetaTensor`` s would follow the batch into the model and break ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from damt.model.spec import ViewSpec

# (quarter turns, plane) of the rotation classes: identity, then 90/180/270° about each axis.
ROTATIONS: tuple[tuple[int, tuple[int, int]], ...] = (
    (0, (0, 1)),
    *((k, plane) for plane in ((1, 2), (0, 2), (0, 1)) for k in (1, 2, 3)),
)


def rotate(x: torch.Tensor, label: int) -> torch.Tensor:
    """Rotate the last three (cubic) axes of ``x`` by rotation class ``label``."""
    k, (a, b) = ROTATIONS[label]
    offset = x.ndim - 3
    return torch.rot90(x, k, dims=(offset + a, offset + b)) if k else x


def crop(volume: np.ndarray, start: tuple[int, ...], size: int) -> np.ndarray:
    """A ``size``³ block at ``start``; parts outside the volume are zero (background).

    Slicing first means a memory-mapped volume is read only where the crop lies.
    """
    out = np.zeros((size,) * 3, dtype=volume.dtype)
    src, dst = [], []
    for s, n in zip(start, volume.shape, strict=True):
        lo, hi = max(s, 0), min(s + size, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def random_start(shape: tuple[int, ...], size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Uniform crop corner; a volume smaller than the crop is centred in it (zero padding)."""
    return tuple(
        int(rng.integers(0, n - size + 1)) if n >= size else (n - size) // 2 for n in shape
    )


def location_label(
    start: tuple[int, ...], size: int, shape: tuple[int, ...], grid: int, axes: int = 2
) -> int:
    """Grid cell of the crop over the first ``axes`` axes, row-major (``row * grid + col`` for
    two axes).

    The cells split the range of possible crop positions, not the volume: a crop's centre can
    only fall in [size/2, n - size/2], so bins over the whole volume would make the central cell
    several times more frequent than a corner (35 % against 4 % for n = 128, size = 56). With
    ``random_start``'s uniform corner in 0..n - size, each cell gets an equal share of the
    positions (up to one position when n - size + 1 is not a multiple of ``grid``). A volume
    smaller than the crop has one position, the centre cell.
    """
    label = 0
    for s, n in zip(start[:axes], shape[:axes], strict=True):
        positions = n - size + 1
        cell = min(s * grid // positions, grid - 1) if positions > 1 else grid // 2
        label = label * grid + cell
    return label


def mim_mask(crop_size: int, spec: ViewSpec, rng: np.random.Generator) -> torch.Tensor:
    """Boolean mask on the MIM patch grid with exactly ``round(ratio × patches)`` true cells."""
    n = crop_size // spec.mim_patch
    flat = np.zeros(n**3, dtype=bool)
    flat[rng.permutation(n**3)[: round(spec.mim_ratio * n**3)]] = True
    return torch.from_numpy(flat.reshape(n, n, n))


def _classes(block: np.ndarray) -> torch.Tensor:
    """Atlas classes as a compact tensor (uint8 as cached; wider ids as int32)."""
    return torch.from_numpy(block if block.dtype == np.uint8 else block.astype(np.int32))


def _as_volume(x) -> np.ndarray:
    """(D, H, W) array from an array/tensor, dropping a leading channel axis of size 1."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().as_subclass(torch.Tensor).numpy()
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {x.shape}")
    return x


# One view's (image, atlas or None) blocks -> the same, augmented (damt.training.augment).
ViewAugment = Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]


def make_views(
    image, atlas, rng: np.random.Generator, spec: ViewSpec, augment: ViewAugment | None = None
) -> dict[str, torch.Tensor]:
    """Two rotated global crops, one rotated local crop (resized), their labels and MIM masks.

    ``image`` float (D, H, W) in [0, 1] and ``atlas`` integer class indices on the same grid
    (a leading channel axis of size 1 is accepted). Returns:

    - ``global_image`` (2, 1, G, G, G) float32: two independent crops, each rotated;
      ``global_rotation`` (2,) their rotation classes; ``global_atlas`` (G, G, G): the
      atlas of the first crop, rotated with it (uint8, or int32 for more than 256 classes);
      ``global_mask`` (g, g, g) bool: MIM mask of the
      second crop on the ``mim_patch`` grid.
    - ``local_image`` (1, L, L, L): a ``local_crop_source``³ crop resized to ``local_crop``³ and
      rotated; ``local_atlas``, ``local_rotation``, ``local_mask`` likewise; ``location``: the
      grid cell of the local crop's position (before rotation; see ``location_label``).

    ``augment`` (optional) transforms each crop, with its atlas where the view has one, before
    its rotation (and, for the local crop, before its resize). It draws its own randomness, so
    the crops, rotations and masks are those of the same ``rng`` without augmentation.
    """
    image, atlas = _as_volume(image), _as_volume(atlas)
    if image.shape != atlas.shape:
        raise ValueError(f"image {image.shape} and atlas {atlas.shape} grids differ")
    g = spec.global_crop
    corners = [random_start(image.shape, g, rng) for _ in range(2)]
    rotations = [int(r) for r in rng.integers(len(ROTATIONS), size=2)]
    # Each rotated crop is written once, straight into the float32 batch slot; atlases keep
    # their compact class dtype (the objective casts them to long on the device).
    global_image = torch.empty((2, 1, g, g, g), dtype=torch.float32)
    first_atlas = crop(atlas, corners[0], g)
    for i, (c, r) in enumerate(zip(corners, rotations, strict=True)):
        block = crop(image, c, g)
        if augment is not None:
            # Only the first global view has an atlas target.
            block, moved = augment(block, first_atlas if i == 0 else None)
            first_atlas = moved if i == 0 else first_atlas
        global_image[i, 0] = rotate(torch.from_numpy(block), r)
    global_atlas = rotate(_classes(first_atlas), rotations[0])

    start = random_start(image.shape, spec.local_crop_source, rng)
    rot = int(rng.integers(len(ROTATIONS)))
    size = (spec.local_crop,) * 3
    block = crop(image, start, spec.local_crop_source)
    block_atlas = crop(atlas, start, spec.local_crop_source)
    if augment is not None:
        block, block_atlas = augment(block, block_atlas)
    img = torch.from_numpy(block.astype(np.float32))
    img = F.interpolate(img[None, None], size=size, mode="trilinear", align_corners=False)[0]
    lab = _classes(block_atlas)
    # nearest-exact samples voxel centres, as trilinear with align_corners=False does.
    lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    lab = lab.to(global_atlas.dtype)

    return {
        "global_image": global_image,
        "global_rotation": torch.tensor(rotations),
        "global_atlas": global_atlas.contiguous(),
        "global_mask": mim_mask(spec.global_crop, spec, rng),
        "local_image": rotate(img, rot).contiguous(),
        "local_atlas": rotate(lab, rot).contiguous(),
        "local_rotation": torch.tensor(rot),
        "local_mask": mim_mask(spec.local_crop, spec, rng),
        "location": torch.tensor(
            location_label(
                start, spec.local_crop_source, image.shape, spec.location_grid, spec.location_axes
            )
        ),
    }
