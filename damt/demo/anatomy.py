"""Synthetic brain anatomy in FreeSurfer's conformed space: label volumes and a T1-like image.

Deformed nested shapes, not real anatomy: a cerebrum ellipsoid with a folded cortical ribbon cut
into the 34 Desikan parcels per hemisphere, subcortical structures, ventricles, cerebellum and
brain stem placed and sized after FreeSurfer's sample subject ``bert``. Hidden phenotypes change
the anatomy the way they do in real cohorts: age thins the cortex, shrinks grey matter and the
hippocampus and enlarges the ventricles; sex changes head size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from damt.demo.reference import (
    BASE_THICKNESS,
    BOX_HI,
    BOX_LO,
    CEREBRUM_AXES,
    CORTEX_T1,
    DEEP_STRUCTURES,
    PARCEL_SEEDS,
    T1_MEANS,
)
from damt.freesurfer.labels import DESIKAN_PARCELS

SHAPE = (256, 256, 256)
# Conformed LIA vox2ras without the centre offset: R = -i, S = -j, A = +k (plus c_ras).
LIA = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class Phenotype:
    """Hidden subject characteristics that drive the synthetic anatomy."""

    subject_id: str
    age: float
    sex: str  # "F" | "M"
    head_scale: float  # linear head-size factor (1.0 = reference male)


@dataclass
class SyntheticSubject:
    """Everything the writer needs for one subject."""

    phenotype: Phenotype
    aparc_aseg: np.ndarray  # int32 (256³), FreeSurfer label ids
    aseg: np.ndarray  # int32, parcels collapsed to 3/42
    t1: np.ndarray  # uint8 brainmask-like image
    c_ras: np.ndarray  # centre offset of the vox2ras (mm)
    centre_vox: np.ndarray  # voxel of the brain centre (the hemispheres meet at its i)
    thickness: dict[int, float]  # aparc+aseg parcel label → mean thickness (mm)
    thickness_sd: dict[int, float]
    surface_holes: dict[str, int]
    etiv: float
    curvature: dict[int, tuple[float, float]]  # parcel → (mean curvature, gaussian curvature)


def vox2ras(c_ras: np.ndarray) -> np.ndarray:
    """4×4 conformed (LIA, 1 mm, 256³) vox2ras with centre ``c_ras``."""
    aff = np.eye(4)
    aff[:3, :3] = LIA
    aff[:3, 3] = c_ras - LIA @ (np.array(SHAPE) / 2.0)
    return aff


def _interp_weights(n_out: int, n_coarse: int) -> np.ndarray:
    """(n_out, n_coarse) linear-interpolation weights spreading a coarse axis over n_out."""
    pos = np.linspace(0.0, n_coarse - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_coarse - 2)
    frac = pos - lo
    w = np.zeros((n_out, n_coarse), dtype=np.float32)
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], coarse: int, amplitude: float
) -> np.ndarray:
    """Smooth random field: trilinear upsampling of a coarse Gaussian grid.

    Trilinear interpolation is separable, so it is three small matrix products.
    """
    grid = rng.normal(0.0, amplitude, size=(coarse, coarse, coarse)).astype(np.float32)
    wi, wj, wk = (_interp_weights(n, coarse) for n in shape)
    field = np.einsum("ia,abc->ibc", wi, grid)
    field = np.einsum("jb,ibc->ijc", wj, field)
    return np.ascontiguousarray(field @ wk.T)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


class _Grid:
    """Warped RAS coordinates (mm, relative to the brain centre) of the working box."""

    def __init__(self, centre_vox: np.ndarray, rng: np.random.Generator):
        # Voxel ranges of the box: i = -R, j = -S, k = +A around the centre voxel.
        i0, i1 = int(centre_vox[0] - BOX_HI[0]), int(centre_vox[0] - BOX_LO[0])
        j0, j1 = int(centre_vox[1] - BOX_HI[2]), int(centre_vox[1] - BOX_LO[2])
        k0, k1 = int(centre_vox[2] + BOX_LO[1]), int(centre_vox[2] + BOX_HI[1])
        self.slices = (slice(i0, i1), slice(j0, j1), slice(k0, k1))
        self.shape = (i1 - i0, j1 - j0, k1 - k0)
        r = (centre_vox[0] - np.arange(i0, i1, dtype=np.float32))[:, None, None]
        s = (centre_vox[1] - np.arange(j0, j1, dtype=np.float32))[None, :, None]
        a = (np.arange(k0, k1, dtype=np.float32) - centre_vox[2])[None, None, :]
        # A smooth warp makes every subject's shapes (and their nesting) differ.
        self.r = r + _smooth_field(rng, self.shape, 6, 3.0)
        self.a = a + _smooth_field(rng, self.shape, 6, 3.0)
        self.s = s + _smooth_field(rng, self.shape, 6, 3.0)

    def block(self, centre, axes, margin: float = 6.0):
        """Index slices (into the box) that bound an ellipsoid, with room for the warp."""
        lo = np.array(centre) - np.array(axes) - margin
        hi = np.array(centre) + np.array(axes) + margin
        c = (-BOX_HI[0], -BOX_HI[2], BOX_LO[1])  # box origin in (R→i, S→j, A→k) terms
        i = slice(max(0, int(-hi[0] - c[0])), min(self.shape[0], int(-lo[0] - c[0]) + 1))
        j = slice(max(0, int(-hi[2] - c[1])), min(self.shape[1], int(-lo[2] - c[1]) + 1))
        k = slice(max(0, int(lo[1] - c[2])), min(self.shape[2], int(hi[1] - c[2]) + 1))
        return i, j, k

    def inside(self, blk, centre, axes) -> np.ndarray:
        """Boolean mask of an ellipsoid within a block of the box."""
        cr, ca, cs = centre
        ar, aa, as_ = axes
        q = ((self.r[blk] - cr) / ar) ** 2
        q += ((self.a[blk] - ca) / aa) ** 2
        q += ((self.s[blk] - cs) / as_) ** 2
        return q < 1.0


def sample_phenotypes(n: int, rng: np.random.Generator, prefix: str = "sub-") -> list[Phenotype]:
    """Ages uniform over 20-85 years, balanced sexes, head size by sex with individual spread."""
    ages = np.round(rng.uniform(20.0, 85.0, size=n), 1)
    sexes = np.array(["F", "M"] * ((n + 1) // 2))[:n]
    rng.shuffle(sexes)
    width = max(3, len(str(n)))
    out = []
    for idx in range(n):
        base = 1.0 if sexes[idx] == "M" else 0.935
        scale = float(np.clip(base * (1.0 + rng.normal(0.0, 0.025)), 0.85, 1.12))
        out.append(
            Phenotype(
                f"{prefix}{idx + 1:0{width}d}", float(ages[idx]), str(sexes[idx]), round(scale, 4)
            )
        )
    return out


def synthesize(ph: Phenotype, rng: np.random.Generator) -> SyntheticSubject:
    """Build one subject's label volumes and T1 image from its phenotype."""
    years = ph.age - 20.0
    atrophy = 1.0 - 0.0009 * years  # linear brain shrinkage
    scale = ph.head_scale * atrophy
    thick_factor = max(0.6, 1.0 - 0.0032 * years + rng.normal(0.0, 0.03))
    centre_vox = np.array([128.0, 128.0, 128.0]) + rng.integers(-4, 5, size=3)
    grid = _Grid(centre_vox, rng)
    labels, rho, axes = _cerebrum(grid, scale, thick_factor, rng)
    _deep_structures(labels, grid, scale, years)
    _wm_hypointensities(labels, grid, years, rng)

    # Brain mask: the labelled brain plus a few millimetres of CSF and meninges around it.
    brain = labels > 0
    margin = (rho < 1.0 + 4.5 / axes[0]) | ndimage.binary_dilation(brain, iterations=3)
    t1 = _t1_image(labels, margin, ph, rng, grid)

    aparc_aseg = np.zeros(SHAPE, dtype=np.int32)
    aparc_aseg[grid.slices] = labels
    aseg = aparc_aseg.copy()
    aseg[(aseg >= 1000) & (aseg < 2000)] = 3
    aseg[aseg >= 2000] = 42
    image = np.zeros(SHAPE, dtype=np.uint8)
    image[grid.slices] = t1

    thickness, thickness_sd, curvature = _surface_measures(thick_factor, rng)
    holes = {h: int(rng.poisson(8 + 0.12 * years)) for h in ("lh", "rh")}
    brain_vox = int(np.count_nonzero((aparc_aseg > 0) & (aparc_aseg != 24)))
    etiv = brain_vox / (0.80 * atrophy**3) * (1.0 + rng.normal(0.0, 0.02))
    c_ras = np.round(rng.uniform(-6.0, 6.0, 3), 4)
    return SyntheticSubject(
        ph,
        aparc_aseg,
        aseg,
        image,
        c_ras,
        centre_vox,
        thickness,
        thickness_sd,
        holes,
        round(float(etiv), 6),
        curvature,
    )


def _cerebrum(
    grid: _Grid, scale: float, thick_factor: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cerebral white matter and the folded cortical ribbon cut into parcels: the label
    block, the radial coordinate of the warped ellipsoid, and its semi-axes (mm)."""
    labels = np.zeros(grid.shape, dtype=np.int32)
    # Cerebrum: radial coordinate of the warped ellipsoid, split into hemispheres at R = 0.
    axes = CEREBRUM_AXES * scale
    rho = np.sqrt((grid.r / axes[0]) ** 2 + (grid.a / axes[1]) ** 2 + (grid.s / axes[2]) ** 2)
    left = grid.r < 0.0
    fissure = np.abs(grid.r) < 1.0
    cerebrum = (rho < 1.0) & ~fissure

    # Parcel of every outer voxel: nearest seed direction in the hemisphere frame.
    seeds = {
        name: _unit(np.array(v) + rng.normal(0.0, 0.04, 3)) for name, v in PARCEL_SEEDS.items()
    }
    names = list(DESIKAN_PARCELS.values())
    seed_mat = np.stack([seeds[n] for n in names]).astype(np.float32)
    outer = cerebrum & ((rho > 0.55) | (np.abs(grid.r) < 16.0))
    idx = np.nonzero(outer)
    r_o, a_o, s_o = grid.r[idx], grid.a[idx], grid.s[idx]
    lat = (np.abs(r_o) - 0.5 * axes[0]) / (0.5 * axes[0])
    d = np.stack([lat, a_o / axes[1], s_o / axes[2]], axis=1)
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-6
    parcel = np.argmax(d @ seed_mat.T, axis=1)

    # Folded ribbon: regional thickness × subject factor, modulated by a gyral pattern.
    base = np.array([BASE_THICKNESS[n] for n in names], dtype=np.float32)
    rib_mm = base[parcel] * thick_factor * 3.9  # voxel ribbon ≈ 3.9× the surface thickness
    ii, jj, kk = (np.asarray(x, dtype=np.float32) for x in idx)
    gyri = np.sin(ii * 0.45 + 1.3) * np.sin(jj * 0.41 + 0.2) * np.sin(kk * 0.37 + 2.1)
    rib_mm *= 1.0 + 0.5 * gyri
    depth_lateral = (1.0 - rho[idx]) * np.minimum(axes[0], axes[2])
    depth_medial = np.abs(r_o) - 1.0
    core = ((r_o / 22.0) ** 2 + (a_o / 45.0) ** 2 + ((s_o + 10.0) / 26.0) ** 2) < 1.0
    depth = np.where(core, depth_lateral, np.minimum(depth_lateral, depth_medial))
    in_ribbon = depth < rib_mm

    wm_label = np.where(left, 2, 41).astype(np.int32)
    labels[cerebrum] = wm_label[cerebrum]
    parcel_ids = np.array([k for k in DESIKAN_PARCELS], dtype=np.int32)
    hemi_off = np.where(left[idx], 1000, 2000).astype(np.int32)
    ctx = hemi_off + parcel_ids[parcel]
    sel = tuple(x[in_ribbon] for x in idx)
    labels[sel] = ctx[in_ribbon]
    return labels, rho, axes


def _deep_structures(labels: np.ndarray, grid: _Grid, scale: float, years: float) -> None:
    """Paint the deep and midline structures, cerebellum and brain stem into ``labels``, each
    group sized by its phenotype scaling."""
    group_scale = {
        "subcortical": scale * (1.0 - 0.0012 * years),
        "hippocampus": scale * (1.0 - 0.0025 * years),
        "ventricle": scale * float(np.exp(0.018 * years)) ** (1.0 / 3.0),
        "fixed": scale,
    }
    for blob in DEEP_STRUCTURES:
        g = group_scale[blob.group]
        sides = (
            [(-1.0, blob.left)] if blob.right is None else [(1.0, blob.left), (-1.0, blob.right)]
        )
        for sign, lab in sides:
            centre = (blob.centre[0] * sign * scale, blob.centre[1] * scale, blob.centre[2] * scale)
            ax = tuple(a * g for a in blob.axes)
            blk = grid.block(centre, ax)
            labels[blk][grid.inside(blk, centre, ax)] = lab


def _wm_hypointensities(
    labels: np.ndarray, grid: _Grid, years: float, rng: np.random.Generator
) -> None:
    """Small blobs (label 77) in cerebral white matter, more of them with age."""
    n_wmh = int(rng.poisson(3 + 0.25 * years))
    wm_idx = np.argwhere(np.isin(labels, (2, 41)))
    for _ in range(n_wmh):
        centre_i = wm_idx[rng.integers(len(wm_idx))]
        rad = rng.uniform(1.2, 3.0)
        lo = np.maximum(centre_i - 4, 0)
        hi = np.minimum(centre_i + 5, grid.shape)
        sub = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        zi, zj, zk = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        ball = (zi - centre_i[0]) ** 2 + (zj - centre_i[1]) ** 2 + (zk - centre_i[2]) ** 2
        sub[(ball < rad**2) & np.isin(sub, (2, 41))] = 77


def _surface_measures(thick_factor: float, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """Per parcel label: mean thickness, its standard deviation, and (mean, gaussian)
    curvature, as the subject's ``?h.aparc.stats`` report them."""
    thickness, thickness_sd, curvature = {}, {}, {}
    for hemi_off in (1000, 2000):
        for p_idx, name in DESIKAN_PARCELS.items():
            lab = hemi_off + p_idx
            t = BASE_THICKNESS[name] * thick_factor * (1.0 + rng.normal(0.0, 0.03))
            thickness[lab] = round(float(t), 3)
            thickness_sd[lab] = round(float(t * rng.uniform(0.17, 0.24)), 3)
            curvature[lab] = (
                round(float(rng.uniform(0.09, 0.14)), 3),
                round(float(rng.uniform(0.015, 0.035)), 3),
            )
    return thickness, thickness_sd, curvature


def _t1_image(
    labels: np.ndarray, mask: np.ndarray, ph: Phenotype, rng: np.random.Generator, grid: _Grid
) -> np.ndarray:
    """T1-like intensities: per-tissue means, texture, bias field, partial volume and noise."""
    years = ph.age - 20.0
    lut = np.zeros(2036, dtype=np.float32)
    for lab, val in T1_MEANS.items():
        lut[lab] = val
    lut[2] = lut[41] = T1_MEANS[2] - 0.04 * years  # grey/white contrast falls with age
    lut[1000:2036] = CORTEX_T1 + 0.06 * years
    img = lut[labels]
    outside = mask & (labels == 0)
    img[outside] = rng.uniform(15.0, 60.0, size=int(outside.sum())).astype(np.float32)
    texture = 1.0 + _smooth_field(rng, grid.shape, 24, 0.03)
    bias = 1.0 + _smooth_field(rng, grid.shape, 3, 0.04)
    img *= texture * bias
    img = ndimage.gaussian_filter(img, sigma=0.6)
    img += rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    img[~mask] = 0.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
