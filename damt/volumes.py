"""Reading image volumes: one place for every stage (radiomics, cache, QC).

FreeSurfer's ``.mgz``/``.mgh`` (and NIfTI) are read with nibabel; SimpleITK has no MGH reader.
Other formats SimpleITK knows (``.nrrd``, ``.mha``, ...) are read with SimpleITK. Conversions keep
the voxel values bit-exact (no casting beyond native byte order) and the geometry exact
(nibabel's RAS affine becomes ITK's LPS origin/spacing/direction).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from damt.errors import SubjectError

NIBABEL_SUFFIXES = (".mgz", ".mgh", ".nii", ".nii.gz")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeError(ValueError):
    """A volume cannot be read or is not usable; the message names the file."""


@dataclass
class Volume:
    """Voxel array (index order i, j, k) and its vox2ras affine."""

    data: np.ndarray
    affine: np.ndarray
    n_frames: int = 1  # frames of the file (4-D volumes: only frame 0 is in ``data``)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def grid(self) -> tuple[tuple[int, ...], np.ndarray]:
        return self.data.shape, self.affine


def _is_nibabel(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in NIBABEL_SUFFIXES)


def _native(data: np.ndarray) -> np.ndarray:
    return data.astype(data.dtype.newbyteorder("="), copy=False)


def _sniff(head: bytes) -> str:
    """What a file's first bytes hold, in words (for messages about a file that is not MGH)."""
    if len(head) >= 348 and head[344:348] in (b"n+1\0", b"ni1\0"):
        return "NIfTI-1 data"
    if len(head) >= 540 and head[4:8] in (b"n+2\0", b"ni2\0"):
        return "NIfTI-2 data"
    if head[:2] == b"\x1f\x8b":
        return "gzip data nested in gzip"
    if head[:4] == b"DICM" or (len(head) > 132 and head[128:132] == b"DICM"):
        return "DICOM data"
    if not head:
        return "nothing (empty)"
    sample = head[:512]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return f"text ({sample[:40].decode('ascii', 'replace')!r}...)"
    return f"unknown bytes (starting {head[:8].hex()})"


def _mgh_problem(path: Path) -> str | None:
    """None when ``path`` (``.mgz``/``.mgh``) starts like an MGH volume, else what it holds."""
    compressed = path.name.lower().endswith(".mgz")
    with open(path, "rb") as fh:
        raw = fh.read(2)
        fh.seek(0)
        if compressed:
            if raw != b"\x1f\x8b":
                what = _sniff(fh.read(1024))
                return f"holds {what}, not gzip-compressed MGH data"
            try:
                with gzip.GzipFile(fileobj=fh) as gz:
                    head = gz.read(1024)
            except (OSError, EOFError, zlib.error) as exc:
                return f"holds damaged gzip data ({exc})"
        else:
            head = fh.read(1024)
    if len(head) >= 4 and int.from_bytes(head[:4], "big") == 1:
        return None
    what = _sniff(head)
    inner = "gzip-compressed " if compressed else ""
    return f"holds {inner}{what}, not an MGH volume (version 1 header)"


def load_volume(path: str | Path) -> Volume:
    """Read a 3-D volume (first frame of 4-D files) into a :class:`Volume`.

    A file that cannot be read, or whose bytes are not what its name says (a gzipped NIfTI
    renamed ``.mgz``, text), raises :class:`VolumeError` naming the file and what it holds.
    """
    path = Path(path)
    try:
        if path.name.lower().endswith((".mgz", ".mgh")):
            problem = _mgh_problem(path)
            if problem is not None:
                raise VolumeError(
                    f"{path}: {problem}; replace it with the FreeSurfer volume "
                    "(e.g. mri_convert to .mgz) and rerun"
                )
        if _is_nibabel(path):
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)
            affine = np.asarray(img.affine, dtype=np.float64)
        else:
            simg = sitk.ReadImage(str(path))
            return sitk_to_volume(simg)
    except VolumeError:
        raise
    except FileNotFoundError as exc:
        raise VolumeError(f"{path}: file not found") from exc
    except PermissionError as exc:
        raise VolumeError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise VolumeError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except Exception as exc:  # any reader failure on bad bytes (MGHError, KeyError, ...)
        raise VolumeError(
            f"{path}: cannot read volume ({type(exc).__name__}: {exc}); "
            "check that it is an intact image file"
        ) from exc
    n_frames = 1
    if data.ndim == 4:
        n_frames = int(data.shape[3])
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    return Volume(_native(data), affine, n_frames)


def volume_to_sitk(vol: Volume) -> sitk.Image:
    """SimpleITK image with the same voxels and physical geometry."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.data.transpose(2, 1, 0)))
    lps = _RAS_TO_LPS @ vol.affine
    spacing = np.array(vol.spacing)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing[None, :]).ravel().tolist())
    return img


def sitk_to_volume(img: sitk.Image) -> Volume:
    """Inverse of :func:`volume_to_sitk`."""
    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    return Volume(_native(data), sitk_geometry(img)[1])


def load_sitk(path: str | Path) -> sitk.Image:
    """Read any supported volume as a SimpleITK image."""
    path = Path(path)
    if _is_nibabel(path):
        return volume_to_sitk(load_volume(path))
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if not path.exists():
            raise VolumeError(f"{path}: file not found") from exc
        raise VolumeError(f"{path}: cannot read volume ({exc})") from exc


def sitk_geometry(img: sitk.Image) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape in i, j, k order, RAS vox2ras affine) of a SimpleITK image, without its voxels."""
    direction = np.array(img.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array(img.GetSpacing())[None, :]
    lps[:3, 3] = img.GetOrigin()
    return tuple(img.GetSize()), _RAS_TO_LPS @ lps


def grid_difference(
    a: tuple[tuple[int, ...], np.ndarray], b: tuple[tuple[int, ...], np.ndarray], atol: float = 1e-3
) -> str | None:
    """None when two (shape, affine) grids agree, else what differs (size, spacing, ...)."""
    (shape_a, aff_a), (shape_b, aff_b) = a, b
    if tuple(shape_a) != tuple(shape_b):
        return f"size {tuple(shape_a)} vs {tuple(shape_b)}"
    sp_a, sp_b = np.linalg.norm(aff_a[:3, :3], axis=0), np.linalg.norm(aff_b[:3, :3], axis=0)
    if not np.allclose(sp_a, sp_b, atol=atol):
        return f"spacing {sp_a.round(4).tolist()} vs {sp_b.round(4).tolist()}"
    if not np.allclose(aff_a[:3, 3], aff_b[:3, 3], atol=atol):
        return f"origin {aff_a[:3, 3].round(3).tolist()} vs {aff_b[:3, 3].round(3).tolist()}"
    if not np.allclose(aff_a[:3, :3] / sp_a, aff_b[:3, :3] / sp_b, atol=atol):
        return "direction differs"
    return None


def check_pair(image_grid, atlas_grid, image_values: np.ndarray, image_name: str) -> None:
    """Fail the subject when the (shape, affine) grids differ or the image is not finite."""
    diff = grid_difference(image_grid, atlas_grid)
    if diff is not None:
        raise SubjectError("grid_mismatch", f"image and atlas grids differ: {diff}")
    if image_values.dtype.kind == "f" and not np.isfinite(image_values).all():
        bad = int((~np.isfinite(image_values)).sum())
        raise SubjectError("nonfinite_intensities", f"{image_name} has {bad} non-finite voxels")
