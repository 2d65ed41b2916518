"""Harmonisation tables: one canonical spelling for names that changed across FreeSurfer 5.x–7.x.

Every rename the package applies to stats files lives here, so that a mixed-version cohort lines
up column by column. The canonical spelling is FreeSurfer 7's. The parser keeps the original
spelling next to the canonical one (``structure_original`` in the long table).

Known differences handled here:

- file names: ``?h.aparc.DKTatlas40.stats`` (5.3) → ``aparc.DKTatlas``; ``?h.BA.stats`` and
  ``?h.BA.thresh.stats`` (5.x) → ``BA_exvivo`` and ``BA_exvivo.thresh`` (6.0 renamed them);
  FastSurfer's ``?h.aparc.DKTatlas.mapped.stats`` → ``aparc.DKTatlas``,
  ``wmparc.DKTatlas.mapped.stats`` → ``wmparc``, ``aparc.DKTatlas+aseg.deep.volume.stats``
  (v1.x/2.0) → ``aseg+DKT`` (v2.1+'s name);
- structures: ``*-Thalamus-Proper`` (5.x, 6.0) → ``*-Thalamus`` (7.x); Destrieux names with
  ``&`` (6.0, e.g. ``G&S_frontomargin``) → ``_and_`` (5.x, 7.x); Brodmann labels without the
  ``_exvivo`` suffix (5.x ``BA1``) → ``BA1_exvivo``;
- ``# Measure`` lines: ``IntraCranialVol, ICV`` (5.x, the same atlas-scaling estimate) →
  ``EstimatedTotalIntraCranialVol, eTIV``; ``*CorticalWhiteMatter`` (5.x) →
  ``*CerebralWhiteMatter`` (6.0 renamed the measure, not the method).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from damt.freesurfer.labels import ASEG_STATS_ROWS, DESIKAN_PARCELS

# Part of the stats stage's cache key: bump when a table below changes, so cached per-subject
# results are recomputed with the new names.
# 2: label-based stats (label.NAME kinds), FastSurfer's files; 3: aseg.presurf.hypos
HARMONIZATION_VERSION = "3"

HEMISPHERES = ("lh", "rh")

# Stats files recon-all writes, by canonical kind (file name without hemisphere and ".stats").
# mri_segstats tables over a volume segmentation, and FastSurfer's segstats.py ones (aseg+DKT:
# its deep segmentation; the CerebNet and HypVINN modules; aseg.presurf.hypos: the surface
# module's aseg before the surface correction, every ASegStatsLUT row, empty ones included).
SEGSTATS_KINDS = (
    "aseg",
    "wmparc",
    "aseg+DKT",
    "cerebellum.CerebNet",
    "hypothalamus.HypVINN",
    "aseg.presurf.hypos",
)
VOLUME_KINDS = (*SEGSTATS_KINDS, "brainvol")
SURFACE_KINDS = (
    "aparc",
    "aparc.a2009s",
    "aparc.DKTatlas",
    "aparc.pial",
    "aparc.a2005s",
    "BA_exvivo",
    "BA_exvivo.thresh",
    "w-g.pct",
)
KINDS = (*VOLUME_KINDS, *SURFACE_KINDS)
# Kinds written by mris_anatomical_stats (the aparcstats2table family).
ANATOMICAL_KINDS = tuple(k for k in SURFACE_KINDS if k != "w-g.pct")

FILE_KIND_ALIASES = {
    "aparc.DKTatlas40": "aparc.DKTatlas",
    "BA": "BA_exvivo",
    "BA.thresh": "BA_exvivo.thresh",
    # FastSurfer's surface module: its DKT parcellation mapped onto the surface.
    "aparc.DKTatlas.mapped": "aparc.DKTatlas",
    "wmparc.DKTatlas.mapped": "wmparc",
    # FastSurfer v1.x/v2.0 --vol_segstats: mri_segstats on the deep segmentation.
    "aparc.DKTatlas+aseg.deep.volume": "aseg+DKT",
}

_STATS_NAME = re.compile(r"(?:(lh|rh)\.)?(.+)\.stats")

# Label-based cortical stats (``mris_anatomical_stats -l ?h.NAME.label``, one row for the label):
# kind ``label.NAME``. recon-all 5.x writes ``?h.entorhinal_exvivo.stats``; other files of this
# shape are recognised by their header (see :func:`damt.freesurfer.stats.subject.list_stats_files`).
LABEL_KIND_PREFIX = "label."
LABEL_STATS_NAMES = ("entorhinal_exvivo", "perirhinal_exvivo")


def label_kind(label: str) -> str:
    """Kind of the label-based stats file of ``label`` (``entorhinal_exvivo`` → ``label.…``)."""
    return f"{LABEL_KIND_PREFIX}{label}"


def is_label_kind(kind: str) -> bool:
    """True for the kinds of label-based cortical stats files."""
    return kind.startswith(LABEL_KIND_PREFIX)


@dataclass(frozen=True)
class FileKind:
    """What a stats file is, from its name."""

    kind: str  # canonical kind, e.g. "aparc.DKTatlas"
    hemisphere: str  # "lh", "rh" or "" for whole-brain files


def classify_stats_file(name: str) -> FileKind | None:
    """Kind of a stats file from its name; None for files the package does not model.

    ``lh.aparc.DKTatlas40.stats`` → ``FileKind("aparc.DKTatlas", "lh")``;
    ``lh.curv.stats`` → None.
    """
    match = _STATS_NAME.fullmatch(name)
    if match is None:
        return None
    hemi, kind = match.group(1) or "", match.group(2)
    if hemi and kind in LABEL_STATS_NAMES:
        return FileKind(label_kind(kind), hemi)
    kind = FILE_KIND_ALIASES.get(kind, kind)
    if kind not in KINDS or (kind in SURFACE_KINDS) != bool(hemi):
        return None
    return FileKind(kind, hemi)


def stats_file_name(kind: str, hemisphere: str = "") -> str:
    """The FreeSurfer 7 file name of a kind: ``("aparc", "lh")`` → ``lh.aparc.stats``."""
    return f"{hemisphere}.{kind}.stats" if hemisphere else f"{kind}.stats"


# --- structure names ------------------------------------------------------------------------

_ASEG_RENAMES = {
    "Left-Thalamus-Proper": "Left-Thalamus",
    "Right-Thalamus-Proper": "Right-Thalamus",
}


def canonical_structures(kind: str, names: list[str]) -> list[str]:
    """Canonical (FreeSurfer 7) spellings of the structure names of a file of ``kind``."""
    if kind in SEGSTATS_KINDS:
        return [_ASEG_RENAMES.get(n, n) for n in names]
    if kind == "aparc.a2009s":
        return [n.replace("&", "_and_") for n in names]
    if kind.startswith("BA_exvivo"):
        return [n if n.endswith("_exvivo") else f"{n}_exvivo" for n in names]
    if is_label_kind(kind) and len(names) == 1:
        # The row names the label file ("./lh.entorhinal_exvivo.label") or the label: the
        # structure is the label either way, the same in every subject.
        return [kind[len(LABEL_KIND_PREFIX) :]]
    return list(names)


# --- "# Measure" lines ----------------------------------------------------------------------

# (key, name) as older versions write them → FreeSurfer 7's (key, name).
_MEASURE_RENAMES = {
    ("IntraCranialVol", "ICV"): ("EstimatedTotalIntraCranialVol", "eTIV"),
    ("lhCorticalWhiteMatter", "lhCorticalWhiteMatterVol"): (
        "lhCerebralWhiteMatter",
        "lhCerebralWhiteMatterVol",
    ),
    ("rhCorticalWhiteMatter", "rhCorticalWhiteMatterVol"): (
        "rhCerebralWhiteMatter",
        "rhCerebralWhiteMatterVol",
    ),
    ("CorticalWhiteMatter", "CorticalWhiteMatterVol"): (
        "CerebralWhiteMatter",
        "CerebralWhiteMatterVol",
    ),
}


def canonical_measure(key: str, name: str) -> tuple[str, str]:
    """Canonical ``(key, name)`` of a ``# Measure KEY, NAME, ...`` line."""
    return _MEASURE_RENAMES.get((key, name), (key, name))


# The key every "# Measure" name FreeSurfer 5.x–7.x writes belongs to (canonical spellings).
# The long table stores a measure line as structure=key, measure=name; a catalog names measure
# lines by name alone, and this table finds the key (``NumVert`` is both a measure line of
# ``Cortex`` and a table column of every parcel, so the name alone is ambiguous there).
MEASURE_KEYS = {
    "BrainSegVol": "BrainSeg",
    "BrainSegVolNotVent": "BrainSegNotVent",
    "BrainSegVolNotVentSurf": "BrainSegNotVentSurf",
    "VentricleChoroidVol": "VentricleChoroidVol",
    "lhCortexVol": "lhCortex",
    "rhCortexVol": "rhCortex",
    "CortexVol": "Cortex",
    "lhCerebralWhiteMatterVol": "lhCerebralWhiteMatter",
    "rhCerebralWhiteMatterVol": "rhCerebralWhiteMatter",
    "CerebralWhiteMatterVol": "CerebralWhiteMatter",
    "SubCortGrayVol": "SubCortGray",
    "TotalGrayVol": "TotalGray",
    "SupraTentorialVol": "SupraTentorial",
    "SupraTentorialVolNotVent": "SupraTentorialNotVent",
    "SupraTentorialVolNotVentVox": "SupraTentorialNotVentVox",
    "MaskVol": "Mask",
    "BrainSegVol-to-eTIV": "BrainSegVol-to-eTIV",
    "MaskVol-to-eTIV": "MaskVol-to-eTIV",
    "lhSurfaceHoles": "lhSurfaceHoles",
    "rhSurfaceHoles": "rhSurfaceHoles",
    "SurfaceHoles": "SurfaceHoles",
    "eTIV": "EstimatedTotalIntraCranialVol",
    "NumVert": "Cortex",
    "WhiteSurfArea": "Cortex",
    "PialSurfArea": "Cortex",
    "MeanThickness": "Cortex",
}


# --- column names of the wide tables (asegstats2table / aparcstats2table) --------------------

# aparcstats2table's --measure names of mris_anatomical_stats columns.
APARC_MEASURE_NAMES = {
    "SurfArea": "area",
    "GrayVol": "volume",
    "ThickAvg": "thickness",
    "ThickStd": "thicknessstd",
    "MeanCurv": "meancurv",
    "GausCurv": "gauscurv",
    "FoldInd": "foldind",
    "CurvInd": "curvind",
    "NumVert": "numvert",
}
# aparcstats2table appends these whole-hemisphere measures as lh_MeanThickness_thickness etc.
_HEMI_MEASURE_SUFFIX = {
    "MeanThickness": "_thickness",
    "WhiteSurfArea": "_area",
    "PialSurfArea": "_area",
}


def table_column_name(kind: str, hemisphere: str, structure: str, measure: str) -> str:
    """Wide-table column of one table cell, named the way FreeSurfer's table tools name it.

    aseg/wmparc volumes are the bare structure (``Left-Hippocampus``), other aseg columns get
    the column header (``Left-Hippocampus_normMean``); cortical parcels are
    ``lh_bankssts_thickness``.
    """
    if kind in SEGSTATS_KINDS:
        return structure if measure == "Volume_mm3" else f"{structure}_{measure}"
    anatomical = kind in ANATOMICAL_KINDS or is_label_kind(kind)
    suffix = APARC_MEASURE_NAMES.get(measure, measure) if anatomical else measure
    return f"{hemisphere}_{structure}_{suffix}"


def measure_column_name(hemisphere: str, key: str, name: str) -> str:
    """Wide-table column of a ``# Measure`` line (``BrainSegVol``, ``lh_MeanThickness_thickness``).

    asegstats2table names eTIV by its key (``EstimatedTotalIntraCranialVol``), the others by
    their name.
    """
    base = key if name == "eTIV" else name
    if not hemisphere:
        return base
    return f"{hemisphere}_{base}{_HEMI_MEASURE_SUFFIX.get(name, '')}"


# --- named structure sets (canonical spellings) for feature catalogs ------------------------

DESTRIEUX = (
    "G_and_S_frontomargin", "G_and_S_occipital_inf", "G_and_S_paracentral",
    "G_and_S_subcentral", "G_and_S_transv_frontopol", "G_and_S_cingul-Ant",
    "G_and_S_cingul-Mid-Ant", "G_and_S_cingul-Mid-Post", "G_cingul-Post-dorsal",
    "G_cingul-Post-ventral", "G_cuneus", "G_front_inf-Opercular", "G_front_inf-Orbital",
    "G_front_inf-Triangul", "G_front_middle", "G_front_sup", "G_Ins_lg_and_S_cent_ins",
    "G_insular_short", "G_occipital_middle", "G_occipital_sup", "G_oc-temp_lat-fusifor",
    "G_oc-temp_med-Lingual", "G_oc-temp_med-Parahip", "G_orbital", "G_pariet_inf-Angular",
    "G_pariet_inf-Supramar", "G_parietal_sup", "G_postcentral", "G_precentral", "G_precuneus",
    "G_rectus", "G_subcallosal", "G_temp_sup-G_T_transv", "G_temp_sup-Lateral",
    "G_temp_sup-Plan_polar", "G_temp_sup-Plan_tempo", "G_temporal_inf", "G_temporal_middle",
    "Lat_Fis-ant-Horizont", "Lat_Fis-ant-Vertical", "Lat_Fis-post", "Pole_occipital",
    "Pole_temporal", "S_calcarine", "S_central", "S_cingul-Marginalis",
    "S_circular_insula_ant", "S_circular_insula_inf", "S_circular_insula_sup",
    "S_collat_transv_ant", "S_collat_transv_post", "S_front_inf", "S_front_middle",
    "S_front_sup", "S_interm_prim-Jensen", "S_intrapariet_and_P_trans",
    "S_oc_middle_and_Lunatus", "S_oc_sup_and_transversal", "S_occipital_ant", "S_oc-temp_lat",
    "S_oc-temp_med_and_Lingual", "S_orbital_lateral", "S_orbital_med-olfact",
    "S_orbital-H_Shaped", "S_parieto_occipital", "S_pericallosal", "S_postcentral",
    "S_precentral-inf-part", "S_precentral-sup-part", "S_suborbital", "S_subparietal",
    "S_temporal_inf", "S_temporal_sup", "S_temporal_transverse",
)  # fmt: skip

# The DKT atlas drops bankssts, frontalpole and temporalpole from Desikan-Killiany.
DKT = tuple(
    n for n in DESIKAN_PARCELS.values() if n not in ("bankssts", "frontalpole", "temporalpole")
)

BA_EXVIVO = (
    "BA1_exvivo", "BA2_exvivo", "BA3a_exvivo", "BA3b_exvivo", "BA4a_exvivo", "BA4p_exvivo",
    "BA6_exvivo", "BA44_exvivo", "BA45_exvivo", "V1_exvivo", "V2_exvivo", "MT_exvivo",
    "perirhinal_exvivo", "entorhinal_exvivo",
)  # fmt: skip

STRUCTURE_SETS: dict[str, tuple[str, ...]] = {
    "aseg": tuple(ASEG_STATS_ROWS.values()),
    "desikan": tuple(DESIKAN_PARCELS.values()),
    "destrieux": DESTRIEUX,
    "dkt": DKT,
    "ba_exvivo": BA_EXVIVO,
}
