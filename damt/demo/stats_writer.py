"""FreeSurfer 7 ``stats/`` files whose numbers are computed from the synthetic volumes.

Layouts follow the files ``recon-all`` 7.x writes (``mri_segstats`` for aseg.stats and
brainvol.stats, ``mris_anatomical_stats`` for ?h.aparc.stats): header comments, ``# Measure``
lines, ``# TableCol`` blocks, ``# ColHeaders`` and whitespace-aligned rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from damt.demo.anatomy import SyntheticSubject
from damt.freesurfer.labels import ASEG_STATS_ROWS, DESIKAN_PARCELS, HEMI_OFFSET, VENTRICLE_LABELS

FS_VERSION = "7.4.1"
SUBCORTICAL_GRAY = (10, 11, 12, 13, 17, 18, 26, 28, 49, 50, 51, 52, 53, 54, 58, 60)
CEREBELLUM = (7, 8, 46, 47)
ASEG_COLUMNS = (
    ("Index", "Index", "NA"),
    ("SegId", "Segmentation Id", "NA"),
    ("NVoxels", "Number of Voxels", "unitless"),
    ("Volume_mm3", "Volume", "mm^3"),
    ("StructName", "Structure Name", "NA"),
    ("normMean", "Intensity normMean", "MR"),
    ("normStdDev", "Itensity normStdDev", "MR"),
    ("normMin", "Intensity normMin", "MR"),
    ("normMax", "Intensity normMax", "MR"),
    ("normRange", "Intensity normRange", "MR"),
)
APARC_COLUMNS = (
    ("StructName", "Structure Name", "NA"),
    ("NumVert", "Number of Vertices", "unitless"),
    ("SurfArea", "Surface Area", "mm^2"),
    ("GrayVol", "Gray Matter Volume", "mm^3"),
    ("ThickAvg", "Average Thickness", "mm"),
    ("ThickStd", "Thickness StdDev", "mm"),
    ("MeanCurv", "Integrated Rectified Mean Curvature", "mm^-1"),
    ("GausCurv", "Integrated Rectified Gaussian Curvature", "mm^-2"),
    ("FoldInd", "Folding Index", "unitless"),
    ("CurvInd", "Intrinsic Curvature Index", "unitless"),
)


@dataclass(frozen=True)
class LabelStats:
    """Voxel count and intensity summary of every label id (indexed by id)."""

    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray


def label_stats(labels: np.ndarray, image: np.ndarray) -> LabelStats:
    """Per-label voxel counts and intensity statistics (what mri_segstats reports)."""
    nz = labels > 0
    lab = labels[nz].astype(np.int64)
    val = image[nz].astype(np.float64)
    size = int(lab.max()) + 1 if lab.size else 1
    count = np.bincount(lab, minlength=size)
    s1 = np.bincount(lab, weights=val, minlength=size)
    s2 = np.bincount(lab, weights=val * val, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, s1 / np.maximum(count, 1), 0.0)
        var = np.where(count > 1, (s2 - count * mean**2) / np.maximum(count - 1, 1), 0.0)
    vmin = np.full(size, np.inf)
    vmax = np.full(size, -np.inf)
    np.minimum.at(vmin, lab, val)
    np.maximum.at(vmax, lab, val)
    vmin[count == 0] = 0.0
    vmax[count == 0] = 0.0
    return LabelStats(count, mean, np.sqrt(np.maximum(var, 0.0)), vmin, vmax)


def _n(stats: LabelStats, labels) -> int:
    return int(sum(stats.count[lab] for lab in labels if lab < len(stats.count)))


def volume_measures(sub: SyntheticSubject, stats: LabelStats) -> dict[str, float]:
    """The whole-brain volume measures mri_segstats derives from aseg (FreeSurfer 7 names)."""
    c = stats.count
    all_labels = np.nonzero(c)[0]
    lh_ctx = int(c[1000:2000].sum()) if len(c) > 1000 else 0
    rh_ctx = int(c[2000:].sum()) if len(c) > 2000 else 0
    # WM hypointensities count toward the hemisphere's white matter, split at the midline.
    wmh = sub.aparc_aseg == 77
    half = int(sub.centre_vox[0])
    lh_wmh = int(np.count_nonzero(wmh[half:]))  # i grows toward the left in LIA
    rh_wmh = int(np.count_nonzero(wmh[:half]))
    lh_wm = int(c[2]) + lh_wmh
    rh_wm = int(c[41]) + rh_wmh
    brain_seg = _n(stats, [lab for lab in all_labels if lab not in (0, 24)])
    vent = _n(stats, VENTRICLE_LABELS)
    subcort = _n(stats, SUBCORTICAL_GRAY)
    cortex = lh_ctx + rh_ctx
    infratentorial = _n(stats, (*CEREBELLUM, 16, 15))
    supra = brain_seg - infratentorial
    mask = int(np.count_nonzero(sub.t1))
    return {
        "BrainSeg": brain_seg,
        "BrainSegNotVent": brain_seg - vent,
        "VentricleChoroidVol": vent,
        "lhCortex": lh_ctx,
        "rhCortex": rh_ctx,
        "Cortex": cortex,
        "lhCerebralWhiteMatter": lh_wm,
        "rhCerebralWhiteMatter": rh_wm,
        "CerebralWhiteMatter": lh_wm + rh_wm,
        "SubCortGray": subcort,
        "TotalGray": cortex + subcort + _n(stats, (8, 47)),
        "SupraTentorial": supra,
        "SupraTentorialNotVent": supra - _n(stats, (4, 5, 14, 31, 43, 44, 63, 72)),
        "Mask": mask,
    }


_MEASURE_TEXT = {
    "BrainSeg": ("BrainSegVol", "Brain Segmentation Volume", "mm^3"),
    "BrainSegNotVent": (
        "BrainSegVolNotVent",
        "Brain Segmentation Volume Without Ventricles",
        "mm^3",
    ),
    "VentricleChoroidVol": (
        "VentricleChoroidVol",
        "Volume of ventricles and choroid plexus",
        "mm^3",
    ),
    "lhCortex": ("lhCortexVol", "Left hemisphere cortical gray matter volume", "mm^3"),
    "rhCortex": ("rhCortexVol", "Right hemisphere cortical gray matter volume", "mm^3"),
    "Cortex": ("CortexVol", "Total cortical gray matter volume", "mm^3"),
    "lhCerebralWhiteMatter": (
        "lhCerebralWhiteMatterVol",
        "Left hemisphere cerebral white matter volume",
        "mm^3",
    ),
    "rhCerebralWhiteMatter": (
        "rhCerebralWhiteMatterVol",
        "Right hemisphere cerebral white matter volume",
        "mm^3",
    ),
    "CerebralWhiteMatter": ("CerebralWhiteMatterVol", "Total cerebral white matter volume", "mm^3"),
    "SubCortGray": ("SubCortGrayVol", "Subcortical gray matter volume", "mm^3"),
    "TotalGray": ("TotalGrayVol", "Total gray matter volume", "mm^3"),
    "SupraTentorial": ("SupraTentorialVol", "Supratentorial volume", "mm^3"),
    "SupraTentorialNotVent": ("SupraTentorialVolNotVent", "Supratentorial volume", "mm^3"),
    "Mask": ("MaskVol", "Mask Volume", "mm^3"),
    "SupraTentorialNotVentVox": (
        "SupraTentorialVolNotVentVox",
        "Supratentorial volume voxel count",
        "mm^3",
    ),
    "BrainSegNotVentSurf": (
        "BrainSegVolNotVentSurf",
        "Brain Segmentation Volume Without Ventricles from Surf",
        "mm^3",
    ),
}


def _measure(key: str, value: float, decimals: int = 6) -> str:
    name, text, unit = _MEASURE_TEXT[key]
    return f"# Measure {key}, {name}, {text}, {value:.{decimals}f}, {unit}\n"


def _header(sub: SyntheticSubject, title: str, program: str, cmdline: str, anatomy: str) -> str:
    sid = sub.phenotype.subject_id
    return (
        f"# Title {title} \n# \n# generating_program {program}\n# cvs_version {FS_VERSION}\n"
        f"# cmdline {cmdline}\n# sysname  Linux\n# hostname damt-demo\n# machine  x86_64\n"
        f"# user     damt\n# anatomy_type {anatomy}\n# \n# SUBJECTS_DIR synthetic\n"
        f"# subjectname {sid}\n"
    )


def _table_cols(columns) -> str:
    out = []
    for i, (head, field, unit) in enumerate(columns, 1):
        out.append(
            f"# TableCol {i:2d} ColHeader {head}\n# TableCol {i:2d} FieldName {field}\n"
            f"# TableCol {i:2d} Units     {unit}\n"
        )
    return "".join(out)


def aseg_stats(sub: SyntheticSubject, stats: LabelStats, measures: dict[str, float]) -> str:
    """Text of ``aseg.stats`` (FreeSurfer 7 layout, 45 rows, 20 measures)."""
    sid = sub.phenotype.subject_id
    etiv = sub.etiv
    holes = sub.surface_holes
    head = _header(
        sub,
        "Segmentation Statistics",
        "mri_segstats",
        f"mri_segstats --seg mri/aseg.mgz --sum stats/aseg.stats --subject {sid} "
        "(synthetic: damt demo-data)",
        "volume",
    )
    lines = [head, "# BrainVolStatsFixed-NotNeeded because voxelvolume=1mm3\n"]
    for key in (
        "BrainSeg",
        "BrainSegNotVent",
        "VentricleChoroidVol",
        "lhCortex",
        "rhCortex",
        "Cortex",
        "lhCerebralWhiteMatter",
        "rhCerebralWhiteMatter",
        "CerebralWhiteMatter",
        "SubCortGray",
        "TotalGray",
        "SupraTentorial",
        "SupraTentorialNotVent",
        "Mask",
    ):
        lines.append(_measure(key, measures[key]))
    lines += [
        f"# Measure BrainSegVol-to-eTIV, BrainSegVol-to-eTIV, Ratio of BrainSegVol to eTIV, "
        f"{measures['BrainSeg'] / etiv:.6f}, unitless\n",
        f"# Measure MaskVol-to-eTIV, MaskVol-to-eTIV, Ratio of MaskVol to eTIV, "
        f"{measures['Mask'] / etiv:.6f}, unitless\n",
        f"# Measure lhSurfaceHoles, lhSurfaceHoles, Number of defect holes in lh surfaces prior "
        f"to fixing, {holes['lh']}, unitless\n",
        f"# Measure rhSurfaceHoles, rhSurfaceHoles, Number of defect holes in rh surfaces prior "
        f"to fixing, {holes['rh']}, unitless\n",
        f"# Measure SurfaceHoles, SurfaceHoles, Total number of defect holes in surfaces prior "
        f"to fixing, {holes['lh'] + holes['rh']}, unitless\n",
        f"# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, "
        f"{etiv:.6f}, mm^3\n",
        "# SegVolFile mri/aseg.mgz \n# InVolFile  mri/brainmask.mgz \n# InVolFrame 0 \n",
        "# Excluding Cortical Gray and White Matter\n# ExcludeSegId 0 2 3 41 42 \n",
        "# VoxelVolume_mm3 1 \n",
        _table_cols(ASEG_COLUMNS),
        f"# NRows {len(ASEG_STATS_ROWS)} \n# NTableCols {len(ASEG_COLUMNS)} \n",
        "# ColHeaders  " + " ".join(c[0] for c in ASEG_COLUMNS) + "  \n",
    ]
    n = len(stats.count)
    for idx, (seg, name) in enumerate(ASEG_STATS_ROWS.items(), 1):
        if seg < n and stats.count[seg] > 0:
            cnt, mean, sd = int(stats.count[seg]), stats.mean[seg], stats.std[seg]
            lo, hi = stats.vmin[seg], stats.vmax[seg]
        else:
            cnt, mean, sd, lo, hi = 0, 0.0, 0.0, 0.0, 0.0
        lines.append(
            f"{idx:3d} {seg:3d} {cnt:9d} {float(cnt):10.1f}  {name:<32s} "
            f"{mean:10.4f} {sd:10.4f} {lo:10.4f} {hi:10.4f} {hi - lo:10.4f} \n"
        )
    return "".join(lines)


def brainvol_stats(measures: dict[str, float]) -> str:
    """Text of ``brainvol.stats``: measure lines only, 12 decimals, as FreeSurfer 7 writes it."""
    keys = (
        "BrainSeg",
        "BrainSegNotVent",
        "SupraTentorial",
        "SupraTentorialNotVent",
        "SubCortGray",
        "lhCortex",
        "rhCortex",
        "Cortex",
        "TotalGray",
        "lhCerebralWhiteMatter",
        "rhCerebralWhiteMatter",
        "CerebralWhiteMatter",
        "Mask",
    )
    lines = [_measure(k, measures[k], 12) for k in keys]
    lines.append(_measure("SupraTentorialNotVentVox", measures["SupraTentorialNotVent"], 12))
    lines.append(_measure("BrainSegNotVentSurf", measures["BrainSegNotVent"], 12))
    lines.append(_measure("VentricleChoroidVol", measures["VentricleChoroidVol"], 12))
    return "".join(lines)


def aparc_rows(
    sub: SyntheticSubject, stats: LabelStats, hemi: str, parcels: dict[int, str] = DESIKAN_PARCELS
) -> list[dict]:
    """Per-parcel cortical measures: GrayVol from the voxels, area = volume / thickness."""
    rows = []
    for p_idx, name in parcels.items():
        lab = HEMI_OFFSET[hemi] + p_idx
        vol = int(stats.count[lab]) if lab < len(stats.count) else 0
        thick = sub.thickness[lab]
        area = round(vol / thick) if thick > 0 else 0
        mean_curv, gaus_curv = sub.curvature[lab]
        rows.append(
            {
                "StructName": name,
                "NumVert": round(area * 1.47),
                "SurfArea": area,
                "GrayVol": vol,
                "ThickAvg": thick,
                "ThickStd": sub.thickness_sd[lab],
                "MeanCurv": mean_curv,
                "GausCurv": gaus_curv,
                "FoldInd": round(area * 0.011),
                "CurvInd": round(area * 0.0011, 1),
            }
        )
    return rows


def aparc_stats(
    sub: SyntheticSubject,
    stats: LabelStats,
    measures: dict[str, float],
    hemi: str,
    day: int,
    parcels: dict[int, str] = DESIKAN_PARCELS,
    annot: str = "aparc",
) -> str:
    """Text of ``?h.{annot}.stats`` (FreeSurfer 7 layout; 34 Desikan parcels by default)."""
    sid = sub.phenotype.subject_id
    rows = aparc_rows(sub, stats, hemi, parcels)
    area = sum(r["SurfArea"] for r in rows)
    mean_thick = sum(r["SurfArea"] * r["ThickAvg"] for r in rows) / max(area, 1)
    head = _header(
        sub,
        "",
        "mris_anatomical_stats",
        f"mris_anatomical_stats -th3 -mgz -f ../stats/{hemi}.{annot}.stats -b "
        f"-a ../label/{hemi}.{annot}.annot {sid} {hemi} white (synthetic: damt demo-data)",
        "surface",
    )
    # The aparc header opens with its own title line and a creation time.
    head = head.replace(
        "# Title  \n# \n",
        "# Table of FreeSurfer cortical parcellation "
        f"anatomical statistics \n# \n# CreationTime 2024/01/{day:02d}-00:00:00-GMT\n",
    )
    lines = [
        head,
        f"# hemi {hemi}\n# AnnotationFile ../label/{hemi}.{annot}.annot\n",
        f"# Measure Cortex, NumVert, Number of Vertices, {round(area * 1.47)}, unitless\n",
        f"# Measure Cortex, WhiteSurfArea, White Surface Total Area, {area:.1f}, mm^2\n",
        f"# Measure Cortex, MeanThickness, Mean Thickness, {mean_thick:.5f}, mm\n",
        "# BrainVolStatsFixed-NotNeeded because voxelvolume=1mm3\n",
        _measure("BrainSeg", measures["BrainSeg"]),
        _measure("BrainSegNotVent", measures["BrainSegNotVent"]),
        _measure("BrainSegNotVentSurf", measures["BrainSegNotVent"]),
        f"# Measure Cortex, CortexVol, Total cortical gray matter volume, "
        f"{measures['Cortex']:.6f}, mm^3\n",
        _measure("SupraTentorial", measures["SupraTentorial"]),
        _measure("SupraTentorialNotVent", measures["SupraTentorialNotVent"]),
        f"# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, "
        f"{sub.etiv:.6f}, mm^3\n",
        f"# NTableCols {len(APARC_COLUMNS)}\n",
        _table_cols(APARC_COLUMNS),
        "# ColHeaders " + " ".join(c[0] for c in APARC_COLUMNS) + "\n",
    ]
    for r in rows:
        lines.append(
            f"{r['StructName']:<40s} {r['NumVert']:5d} {r['SurfArea']:6d} "
            f"{r['GrayVol']:6d} {r['ThickAvg']:6.3f} {r['ThickStd']:5.3f} "
            f"{r['MeanCurv']:9.3f} {r['GausCurv']:9.3f} {r['FoldInd']:8d} "
            f"{r['CurvInd']:7.1f}\n"
        )
    return "".join(lines)


def stats_files(sub: SyntheticSubject, day: int) -> dict[str, str]:
    """File name → text of every stats file written for a synthetic subject."""
    stats = label_stats(sub.aparc_aseg, sub.t1)
    measures = volume_measures(sub, stats)
    return {
        "aseg.stats": aseg_stats(sub, stats, measures),
        "brainvol.stats": brainvol_stats(measures),
        "lh.aparc.stats": aparc_stats(sub, stats, measures, "lh", day),
        "rh.aparc.stats": aparc_stats(sub, stats, measures, "rh", day),
    }
