"""Quality control: per-subject checks and the manifest that decides who trains.

Each check yields issues with a machine-readable code (``stage:reason``, e.g.
``cache:grid_mismatch``, ``stats:stats_missing``, ``qc:surface_holes``) and a human-readable
detail; their severity and a subject's status are :mod:`damt.qc.severity`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from damt.discovery.ids import participant_from_name
from damt.features import FEATURE_GROUPS
from damt.features.tables import feature_columns
from damt.manifest import KEY
from damt.qc.severity import IGNORE, check_severity, severity_of, status_of
from damt.results import OK


@dataclass(frozen=True)
class QcSettings:
    """Thresholds of the checks (``qc`` section of the config; defaults in the schema). A field
    is None where the rule at hand does not read the key (:func:`qc_params`)."""

    expected_labels: tuple[int, ...] | None = None
    voxel_size_range: tuple[float, float] | None = None
    shape_range: tuple[int, int] | None = None
    intensity_p99_range: tuple[float, float] | None = None
    etiv_range: tuple[float, float] | None = None
    max_surface_holes: float | None = None
    outlier_z: float | None = None
    max_outliers: int | None = None
    severity: Mapping[str, str] | None = None

    @classmethod
    def from_config(cls, qc: Mapping) -> QcSettings:
        """Settings from (a selection of, see :func:`qc_params`) the config's ``qc`` section:
        each QC rule passes only the keys it uses."""
        values = {}
        for f in fields(cls):
            if f.name not in qc:
                continue
            value = qc[f.name]
            if f.name == "severity":
                value = dict(value)
                check_severity(value)
            elif f.name == "expected_labels":
                value = tuple(int(x) for x in value)
            elif isinstance(value, list | tuple):
                value = tuple(value)
            values[f.name] = value
        return cls(**values)


# The ``qc`` keys each cohort QC rule reads, and only those are its Snakemake params: changing a
# key reruns the rules that use it (and what depends on their outputs), nothing else. A key only
# the manifest uses (outlier_z, max_outliers, montage_subjects) leaves qc/checks.parquet, the
# normalisation and everything fitted on it alone.
QC_KEYS: dict[str, tuple[str, ...]] = {
    "qc_checks": (
        "expected_labels",
        "voxel_size_range",
        "shape_range",
        "intensity_p99_range",
        "etiv_range",
        "max_surface_holes",
        "severity",
    ),
    "manifest": ("outlier_z", "max_outliers", "montage_subjects", "severity"),
}


def qc_params(qc: Mapping, rule: str) -> dict:
    """The part of the config's ``qc`` section that ``rule`` (a key of :data:`QC_KEYS`) uses."""
    return {key: qc[key] for key in QC_KEYS[rule]}


def _outside(value: float, bounds: Sequence[float]) -> bool:
    return not (bounds[0] <= value <= bounds[1])


def volume_issues(info: Mapping, s: QcSettings) -> list[tuple[str, str]]:
    """Issues from the volume measures the cache stage records."""
    out = []
    vox = info.get("voxel_size", [])
    if any(_outside(v, s.voxel_size_range) for v in vox):
        out.append(("qc:voxel_size", f"voxel size {vox} mm outside {list(s.voxel_size_range)}"))
    shape = info.get("shape", [])
    if any(_outside(v, s.shape_range) for v in shape):
        out.append(("qc:shape", f"shape {shape} outside {list(s.shape_range)} per axis"))
    p99 = info.get("intensity_p1_p50_p99", [np.nan] * 3)[2]
    if not np.isfinite(p99) or _outside(p99, s.intensity_p99_range):
        out.append(
            (
                "qc:intensity",
                f"99th intensity percentile in the brain {p99} outside "
                f"{list(s.intensity_p99_range)}",
            )
        )
    frames = {name: n for name, n in (info.get("n_frames") or {}).items() if n > 1}
    if frames:
        listed = ", ".join(f"{name} has {n} frames" for name, n in frames.items())
        out.append(
            (
                "qc:multiframe",
                f"{listed}; only frame 0 is used (set qc.severity qc:multiframe: fail to "
                "exclude such subjects, or extract the frame with mri_convert --frame 0)",
            )
        )
    if "labels_present" in info and not info["labels_present"]:
        out.append(
            (
                "qc:empty_atlas",
                "the atlas holds background (label 0) only: no atlas target; check the "
                "subject's aparc+aseg (excluded from training by default)",
            )
        )
    present = set(info.get("labels_present", []))
    missing = [lab for lab in s.expected_labels if lab not in present]
    if missing:
        out.append(("qc:missing_labels", f"expected labels absent: {missing}"))
    if info.get("unexpected_labels"):
        listed = ", ".join(f"{k} ({v} voxels)" for k, v in info["unexpected_labels"].items())
        out.append(
            (
                "qc:unexpected_labels",
                f"labels outside the label table (background in the cache): {listed}",
            )
        )
    return out


def stage_issues(stage: str, row: Mapping | None) -> list[tuple[str, str]]:
    """Issues of a per-subject stage result (a shard summary row)."""
    if row is None:
        return [(f"{stage}:not_run", f"no {stage} result for this subject")]
    if row["status"] != OK:
        return [(f"{stage}:{row['reason']}", row["detail"])]
    info = row.get("info") or {}
    out = []
    if info.get("file_errors"):
        out.append((f"{stage}:file_errors", "; ".join(info["file_errors"].values())))
    if info.get("nonfinite_values"):
        out.append((f"{stage}:nonfinite_values", "; ".join(info["nonfinite_values"].values())))
    if info.get("roi_errors"):
        out.append(
            (f"{stage}:roi_errors", "; ".join(f"{k}: {v}" for k, v in info["roi_errors"].items()))
        )
    return out


def subject_name_issues(subject_id: str, stats_row: Mapping | None) -> list[tuple[str, str]]:
    """Stats whose headers name another subject than the folder (maybe another subject's)."""
    if stats_row is None or stats_row["status"] != OK:
        return []
    names = (stats_row.get("info") or {}).get("header_subject_names") or []
    if not names:
        return []
    return [
        (
            "qc:stats_subject_mismatch",
            f"the stats files' headers name subject {', '.join(names)}, not {subject_id}: "
            "check that stats/ belongs to this folder's volumes (harmless after a renamed "
            "folder; set qc.severity qc:stats_subject_mismatch: ignore or fail)",
        )
    ]


def freesurfer_issues(
    holes: float, etiv: float, s: QcSettings, etiv_expected: bool = False
) -> list[tuple[str, str]]:
    """FreeSurfer's own QC numbers: surface defect holes (Euler number) and eTIV.

    ``etiv_expected``: the stats files hold an eTIV line, so a non-finite eTIV is an issue.
    """
    out = []
    if etiv_expected and not np.isfinite(etiv):
        out.append(
            (
                "qc:etiv_missing",
                f"eTIV is {etiv} in the stats files (not a finite number): the eTIV check "
                "could not run; check the subject's aseg.stats/brainvol.stats",
            )
        )
    if np.isfinite(holes) and holes > s.max_surface_holes:
        euler = 2 - 2 * holes
        out.append(
            (
                "qc:surface_holes",
                f"{holes:g} surface defect holes before fixing (Euler "
                f"number {euler:g}) > {s.max_surface_holes:g}",
            )
        )
    if np.isfinite(etiv) and _outside(etiv, s.etiv_range):
        out.append(("qc:etiv", f"eTIV {etiv:.0f} mm^3 outside {list(s.etiv_range)}"))
    return out


def _available(tables: Mapping[str, pd.DataFrame]) -> dict[str, set[str]]:
    """Subjects with at least one value in each feature table."""
    out = {}
    for group, frame in tables.items():
        cols = feature_columns(frame)
        has = frame[cols].notna().any(axis=1) if cols else pd.Series(False, index=frame.index)
        out[group] = set(frame.loc[has, KEY])
    return out


def build_checks(
    subjects: pd.DataFrame,
    report: pd.DataFrame,
    summaries: Mapping[str, pd.DataFrame],
    fs_qc: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    s: QcSettings,
) -> pd.DataFrame:
    """One row per discovered subject (included and flagged) with issues and status.

    ``summaries`` maps stage → shard summaries; ``fs_qc`` has ``subject_id, surface_holes,
    etiv``; ``tables`` maps feature group → cohort table. Outliers are added later by
    :func:`add_outliers` (they need the normalised tables, fitted on these statuses).
    """
    by_stage = {
        st: {r["subject_id"]: r for r in df.to_dict("records")} for st, df in summaries.items()
    }
    fsq = fs_qc.set_index(KEY) if len(fs_qc) else pd.DataFrame(columns=["surface_holes", "etiv"])
    available = _available(tables)
    rows = []
    for rec in subjects.itertuples():
        sid = rec.subject_id
        issues: list[tuple[str, str]] = []
        cache = by_stage.get("cache", {}).get(sid)
        for stage in ("cache", "stats", "radiomics"):
            if stage in by_stage:
                issues += stage_issues(stage, by_stage[stage].get(sid))
        if cache is not None and cache["status"] == OK:
            issues += volume_issues(cache["info"], s)
        holes = float(fsq.loc[sid, "surface_holes"]) if sid in fsq.index else np.nan
        etiv = float(fsq.loc[sid, "etiv"]) if sid in fsq.index else np.nan
        stats_row = by_stage.get("stats", {}).get(sid)
        recorded = (((stats_row or {}).get("info") or {}).get("qc")) or {}
        stats_ok = stats_row is not None and stats_row["status"] == OK
        issues += freesurfer_issues(holes, etiv, s, etiv_expected=stats_ok and "etiv" in recorded)
        issues += subject_name_issues(sid, stats_row)
        for group in tables:
            if sid not in available[group]:
                issues.append((f"features:{group}_missing", f"no {group} values"))
        rows.append(
            {
                KEY: sid,
                "path": rec.path,
                "discovery": "included",
                "issues": issues,
                "has_cache": cache is not None and cache["status"] == OK,
                "cache_dir": (
                    os.path.dirname(cache["outputs"]["image"])
                    if cache is not None and cache["status"] == OK
                    else ""
                ),
                **{f"has_{g}": sid in available.get(g, set()) for g in FEATURE_GROUPS},
                "fs_version": ((stats_row or {}).get("info") or {}).get("fs_version", "")
                or getattr(rec, "fs_version", ""),
                **{c: getattr(rec, c, "") for c in RECON_COLUMNS},
                "participant": getattr(rec, "participant", "") or sid,
                "surface_holes": holes,
                "etiv": etiv,
            }
        )
    for rec in report[report["status"] == "flagged"].itertuples():
        rows.append(
            {
                KEY: rec.subject_id,
                "path": rec.folder,
                "discovery": "flagged",
                "issues": [(f"discovery:{rec.reason}", rec.detail)],
                "has_cache": False,
                "cache_dir": "",
                **{f"has_{g}": False for g in FEATURE_GROUPS},
                "fs_version": "",
                **dict.fromkeys(RECON_COLUMNS, ""),
                "participant": participant_from_name(rec.subject_id),
                "surface_holes": np.nan,
                "etiv": np.nan,
            }
        )
    frame = pd.DataFrame(rows)
    frame["issues"] = mixed_segmenter_issues(frame)
    return _finish(frame, s).sort_values(KEY, ignore_index=True)


def mixed_segmenter_issues(frame: pd.DataFrame) -> list[list[tuple[str, str]]]:
    """Issue lists with ``qc:mixed_segmenters`` added to every subject outside the cohort's
    most common segmenter, when the included subjects were segmented by more than one (FreeSurfer
    and FastSurfer volumes and stats differ systematically)."""
    included = frame[(frame["discovery"] == "included") & (frame["segmenter"] != "")]
    counts = included["segmenter"].value_counts()
    if len(counts) < 2:
        return list(frame["issues"])
    majority = counts.index[0]
    split = ", ".join(f"{name} {n}" for name, n in counts.items())
    detail = f"the cohort mixes segmenters ({split}); this subject is not {majority}"
    return [
        [*issues, ("qc:mixed_segmenters", detail)]
        if disc == "included" and seg not in ("", majority)
        else list(issues)
        for issues, disc, seg in zip(
            frame["issues"], frame["discovery"], frame["segmenter"], strict=True
        )
    ]


def _finish(frame: pd.DataFrame, s: QcSettings) -> pd.DataFrame:
    """Derive ``reasons``, ``detail`` and ``status`` from the issue list."""
    active = [
        [(c, d) for c, d in issues if severity_of(c, s.severity) != IGNORE]
        for issues in frame["issues"]
    ]
    frame = frame.copy()
    frame["reasons"] = [[c for c, _ in iss] for iss in active]
    frame["detail"] = ["; ".join(f"{c}: {d}" for c, d in iss) for iss in active]
    frame["status"] = [status_of(r, s.severity) for r in frame["reasons"]]
    return frame


def count_outliers(z_tables: Sequence[pd.DataFrame], threshold: float) -> pd.Series:
    """Per subject, the number of normalised values with ``|z| > threshold`` (NaN ignored)."""
    counts: dict[str, int] = {}
    for frame in z_tables:
        cols = feature_columns(frame)
        if not cols:
            continue
        n = (frame[cols].abs() > threshold).sum(axis=1)
        for sid, k in zip(frame[KEY], n, strict=True):
            counts[sid] = counts.get(sid, 0) + int(k)
    return pd.Series(counts, dtype="int64")


def add_outliers(checks: pd.DataFrame, outliers: pd.Series, s: QcSettings) -> pd.DataFrame:
    """Final manifest: outlier counts added as an issue where above ``max_outliers``."""
    frame = checks.copy()
    frame["n_outliers"] = [int(outliers.get(sid, 0)) for sid in frame[KEY]]
    issues = []
    for iss, n in zip(frame["issues"], frame["n_outliers"], strict=True):
        extra = (
            [("qc:outliers", f"{n} feature values with |z| > {s.outlier_z:g}")]
            if n > s.max_outliers
            else []
        )
        issues.append(list(iss) + extra)
    frame["issues"] = issues
    return _finish(frame, s)


# What discovery read from the recon's status files (damt.freesurfer.recon), per subject.
RECON_COLUMNS = ("segmenter", "segmenter_version", "recon_hours")

MANIFEST_COLUMNS = [
    KEY,
    "participant",
    "status",
    "reasons",
    "detail",
    "path",
    "discovery",
    "has_cache",
    "cache_dir",
    *(f"has_{g}" for g in FEATURE_GROUPS),
    "fs_version",
    *RECON_COLUMNS,
    "surface_holes",
    "etiv",
    "n_outliers",
    "split",
]


def manifest_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The manifest's columns, in order (the issue tuples are folded into reasons/detail)."""
    return frame[MANIFEST_COLUMNS].reset_index(drop=True)
