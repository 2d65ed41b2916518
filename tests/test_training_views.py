"""View generation: crops, rotations applied to image and atlas together, location, MIM masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from damt.model.spec import ViewSpec
from damt.training.views import (
    ROTATIONS,
    crop,
    location_label,
    make_views,
    random_start,
    rotate,
)

SPEC = ViewSpec(global_crop=32, local_crop=32, local_crop_source=24, mim_patch=16)


def _volume(shape=(48, 56, 40), seed=0):
    rng = np.random.default_rng(seed)
    atlas = rng.integers(0, 7, size=shape).astype(np.uint8)
    image = (atlas / 6.0).astype(np.float16)
    return image, atlas


def test_ten_distinct_rotations_that_undo_each_other():
    x = torch.arange(4**3).reshape(4, 4, 4)
    rotated = [rotate(x, r) for r in range(len(ROTATIONS))]
    assert len(ROTATIONS) == 10
    for i in range(10):
        for j in range(i + 1, 10):
            assert not torch.equal(rotated[i], rotated[j])
    # Four quarter turns about one axis give the identity again.
    y = x
    for _ in range(4):
        y = rotate(y, 1)
    assert torch.equal(y, x)


def test_views_are_plain_tensors_with_expected_shapes():
    image, atlas = _volume()
    v = make_views(image, atlas, np.random.default_rng(0), SPEC)
    assert all(type(t) is torch.Tensor for t in v.values())
    assert v["global_image"].shape == (2, 1, 32, 32, 32)
    assert v["global_image"].dtype == torch.float32
    assert v["global_atlas"].shape == (32, 32, 32)
    # Atlases keep the cache's compact dtype; the objective casts them to long on the device.
    assert v["global_atlas"].dtype == v["local_atlas"].dtype == torch.uint8
    assert v["local_image"].shape == (1, 32, 32, 32)
    assert v["local_atlas"].shape == (32, 32, 32)
    assert v["global_rotation"].shape == (2,)
    assert 0 <= int(v["location"]) < 9
    assert v["global_mask"].shape == (2, 2, 2) and v["local_mask"].shape == (2, 2, 2)
    # 75 % of the 8 patches, exactly.
    assert int(v["global_mask"].sum()) == 6 and int(v["local_mask"].sum()) == 6


def test_atlases_with_more_than_256_classes():
    image, atlas = _volume()
    wide = atlas.astype(np.uint16) + 300
    v = make_views(image, wide, np.random.default_rng(0), SPEC)
    assert v["global_atlas"].dtype == v["local_atlas"].dtype == torch.int32
    assert int(v["global_atlas"].min()) >= 300


def test_rotation_moves_image_and_atlas_together():
    # The image is a function of the atlas, so it stays so only if both got the same rotation.
    image, atlas = _volume()
    for seed in range(10):
        v = make_views(image, atlas, np.random.default_rng(seed), SPEC)
        expected = (v["global_atlas"].float() / 6.0).half().float()
        torch.testing.assert_close(v["global_image"][0, 0], expected)


def test_rotation_labels_cover_all_classes():
    image, atlas = _volume()
    seen = set()
    for seed in range(60):
        v = make_views(image, atlas, np.random.default_rng(seed), SPEC)
        seen.update(v["global_rotation"].tolist())
        seen.add(int(v["local_rotation"]))
    assert seen == set(range(10))


def test_location_label_bins_the_crop_centre_on_the_first_two_axes():
    shape = (90, 90, 90)
    assert location_label((0, 0, 0), 30, shape, 3) == 0
    assert location_label((0, 60, 0), 30, shape, 3) == 2
    assert location_label((60, 0, 50), 30, shape, 3) == 6
    assert location_label((30, 30, 0), 30, shape, 3) == 4
    assert location_label((60, 60, 60), 30, shape, 3) == 8


@pytest.mark.parametrize("axes", [2, 3])
def test_location_classes_are_equally_likely(axes):
    # The full preset: 128³ volume, 56³ local crops. Every crop position along an axis is
    # equally likely (random_start), so enumerating them gives the class frequencies exactly.
    n, size, grid = 128, 56, 3
    positions = range(n - size + 1)
    per_axis = np.bincount([location_label((s,), size, (n,), grid, axes=1) for s in positions])
    assert per_axis.tolist() == [25, 24, 24]  # 73 positions in three cells
    counts = np.zeros(grid**axes)
    for corner in np.ndindex(*(len(positions),) * axes):
        counts[location_label(corner + (0,) * (3 - axes), size, (n,) * 3, grid, axes)] += 1
    freq = counts / counts.sum()
    assert len(freq) == grid**axes and freq.min() > 0
    assert np.abs(freq - 1 / grid**axes).max() < 0.01 * 3 / axes
    # Binning the crop centre over the whole volume instead (the former labels) would give the
    # centre cell ~35 % and each corner ~4 % in 2-D.
    centre_bins = [min(int((s + size / 2) / n * grid), grid - 1) for s in positions]
    old_freq = np.bincount(centre_bins, minlength=grid) / len(positions)
    assert old_freq[1] ** 2 > 0.33 and old_freq[0] ** 2 < 0.05
    # And what make_views draws follows the same uniform distribution.
    rng = np.random.default_rng(0)
    drawn = np.bincount(
        [
            location_label(random_start((n,) * 3, size, rng), size, (n,) * 3, grid, axes)
            for _ in range(5000)
        ],
        minlength=grid**axes,
    )
    assert np.abs(drawn / 5000 - 1 / grid**axes).max() < 0.03


def test_three_axis_location_labels_from_make_views():
    image, atlas = _volume(shape=(48, 56, 40))
    spec = ViewSpec(
        global_crop=32, local_crop=32, local_crop_source=24, mim_patch=16, location_axes=3
    )
    assert spec.n_locations == 27
    labels = {
        int(make_views(image, atlas, np.random.default_rng(s), spec)["location"])
        for s in range(200)
    }
    assert labels <= set(range(27)) and len(labels) > 20
    # A volume smaller than the crop has one position: the centre cell.
    assert location_label((-4, -4, -4), 24, (16, 16, 16), 3, axes=3) == 13


def test_local_crop_location_matches_where_it_was_cut():
    # Volume whose intensity encodes the 3×3 cell; local crops come from one cell's centre.
    shape = (96, 96, 32)
    cell = (np.arange(96)[:, None] // 32) * 3 + (np.arange(96)[None, :] // 32)
    image = np.repeat(cell[:, :, None], 32, axis=2).astype(np.float16)
    atlas = np.zeros(shape, dtype=np.uint8)
    spec = ViewSpec(global_crop=32, local_crop=32, local_crop_source=4, mim_patch=16)
    for seed in range(30):
        v = make_views(image, atlas, np.random.default_rng(seed), spec)
        values = torch.unique(v["local_image"])
        if len(values) == 1:  # crop inside one cell: its value is the label
            assert int(values[0]) == int(v["location"])


def test_small_volume_is_zero_padded():
    image, atlas = _volume(shape=(20, 24, 16))
    v = make_views(image, atlas, np.random.default_rng(0), SPEC)
    assert v["global_image"].shape == (2, 1, 32, 32, 32)
    total = float(image.astype(np.float32).sum())
    for view in v["global_image"]:  # the whole volume fits in each crop, whatever the rotation
        assert float(view.sum()) == pytest.approx(total, rel=1e-4)


def test_crop_out_of_bounds_is_background():
    vol = np.ones((4, 4, 4), dtype=np.float32)
    out = crop(vol, (-2, 2, 0), 4)
    assert out[:2].sum() == 0 and out[2:, :2].sum() == 16 and out[2:, 2:].sum() == 0


def test_same_rng_same_views_and_metatensor_input_is_accepted():
    image, atlas = _volume()
    a = make_views(image, atlas, np.random.default_rng(3), SPEC)
    meta_image = MetaTensor(torch.from_numpy(image.astype(np.float32))[None])
    meta_atlas = MetaTensor(torch.from_numpy(atlas.astype(np.int64))[None])
    b = make_views(meta_image, meta_atlas, np.random.default_rng(3), SPEC)
    assert all(type(t) is torch.Tensor for t in b.values())
    for key in a:
        torch.testing.assert_close(a[key].to(b[key].dtype), b[key])


def test_mismatched_grids_are_refused():
    image, atlas = _volume()
    with pytest.raises(ValueError, match="grids differ"):
        make_views(image, atlas[:-1], np.random.default_rng(0), SPEC)


def test_local_crop_resizes_image_and_atlas_on_the_same_grid():
    # Binary blocky atlas and image = atlas: a resized image voxel is exactly 0 or 1 only where
    # every source voxel it interpolates shares that class, so the atlas must agree there.
    rng = np.random.default_rng(0)
    atlas = np.kron(rng.integers(0, 2, size=(12, 14, 10)), np.ones((3, 3, 3))).astype(np.uint8)
    image = atlas.astype(np.float32)
    for seed in range(5):
        v = make_views(image, atlas, np.random.default_rng(seed), SPEC)
        value = v["local_image"][0]
        pure = (value == 0) | (value == 1)
        assert pure.float().mean() > 0.3
        assert torch.equal(value[pure].long(), v["local_atlas"][pure])


def _unrotate(x: torch.Tensor, label: int) -> torch.Tensor:
    """The inverse of :func:`rotate` for rotation class ``label``."""
    k, (a, b) = ROTATIONS[label]
    offset = x.ndim - 3
    return torch.rot90(x, -k, dims=(offset + a, offset + b))


def test_every_label_undoes_to_its_view():
    """Each view, rotated back by its rotation label, is a crop of the volume (image and atlas
    at the same corner), and the location label is that of the local crop's corner: every voxel
    value is unique, so a view's first voxel says where it was cut."""
    shape = (72, 80, 68)
    index = np.arange(np.prod(shape)).reshape(shape)
    image = (index / index.size).astype(np.float32)  # distinct in float32 (< 2^24 voxels)
    atlas = (index % 251).astype(np.uint8)
    spec = ViewSpec(global_crop=32, local_crop=24, local_crop_source=24, mim_patch=8)

    def corner(block: torch.Tensor) -> tuple[int, ...]:
        first = round(float(block[0, 0, 0]) * index.size)
        return tuple(int(c) for c in np.unravel_index(first, shape))

    for seed in range(20):
        v = make_views(image, atlas, np.random.default_rng(seed), spec)
        for i in (0, 1):
            view = _unrotate(v["global_image"][i, 0], int(v["global_rotation"][i]))
            start = corner(view)
            assert torch.equal(view, torch.from_numpy(crop(image, start, 32)))
            if i == 0:  # the atlas target is the first view's, rotated with it
                back = _unrotate(v["global_atlas"], int(v["global_rotation"][0]))
                assert torch.equal(back, torch.from_numpy(crop(atlas, start, 32)))
        # The local crop at its own size (no resize): the same, and its location cell.
        local = _unrotate(v["local_image"][0], int(v["local_rotation"]))
        start = corner(local)
        torch.testing.assert_close(local, torch.from_numpy(crop(image, start, 24)), rtol=0, atol=0)
        back = _unrotate(v["local_atlas"], int(v["local_rotation"]))
        assert torch.equal(back, torch.from_numpy(crop(atlas, start, 24)))
        assert int(v["location"]) == location_label(start, 24, shape, spec.location_grid)
