"""The cohort QC steps of the workflow: checks, then (after normalisation) the manifest.

File handling around the pure functions of :mod:`damt.qc.checks` and :mod:`damt.qc.report`,
in the order the rules run them:

1. :func:`write_checks` gathers discovery, per-subject stage results and feature availability
   into ``qc/checks.parquet`` with a preliminary status per subject;
2. (rule ``normalize``: :func:`damt.features.normalize.write_normalized` fits each feature group
   on the subjects whose preliminary status is in ``normalize.fit_on``;)
3. :func:`write_manifest` adds the outlier counts of the normalised values (before
   ``normalize.clip``, which would hide them) and writes ``manifest.parquet`` plus the QC page of
   the report.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from damt.features.normalize import Normalizer
from damt.features.tables import read_table
from damt.io import write_atomic
from damt.manifest import KEY
from damt.qc.checks import QcSettings, add_outliers, build_checks, count_outliers, manifest_frame
from damt.qc.report import measure_frame, plot_distributions, plot_montage, write_failures
from damt.results import read_summaries
from damt.split import split_from_config

log = logging.getLogger(__name__)

# Measures plotted on the QC page when the tables hold them (asegstats2table names).
REPORT_MEASURES = (
    "etiv",
    "surface_holes",
    "BrainSegVol",
    "CortexVol",
    "CerebralWhiteMatterVol",
    "Left-Lateral-Ventricle",
    "Left-Hippocampus",
    "lh_MeanThickness_thickness",
    "whole_brain_glcm_Contrast",
    "n_outliers",
)


def fs_qc_frame(stats_summary: pd.DataFrame) -> pd.DataFrame:
    """``subject_id, surface_holes, etiv`` from the stats stage's per-subject info."""
    rows = []
    for rec in stats_summary.itertuples():
        qc = (rec.info or {}).get("qc", {})
        rows.append(
            {
                KEY: rec.subject_id,
                "surface_holes": qc.get("surface_holes", float("nan")),
                "etiv": qc.get("etiv", float("nan")),
            }
        )
    return pd.DataFrame(rows, columns=[KEY, "surface_holes", "etiv"])


def write_checks(
    qc: Mapping,
    outdir: str | Path,
    subjects_tsv: str | Path,
    report_tsv: str | Path,
    summaries: Mapping[str, Sequence[str | Path]],
    tables: Mapping[str, str | Path],
    out: str | Path,
) -> pd.DataFrame:
    """Step 1: per-subject checks and preliminary status (``qc/checks.parquet``).

    ``qc``: the ``qc`` keys of :data:`damt.qc.checks.QC_KEYS` ``["qc_checks"]`` (the rule's params).
    """
    subjects = pd.read_csv(subjects_tsv, sep="\t", dtype=str, keep_default_na=False)
    report = pd.read_csv(report_tsv, sep="\t", dtype=str, keep_default_na=False)
    stage_frames = {stage: read_summaries(paths) for stage, paths in summaries.items()}
    fs_qc = (
        fs_qc_frame(stage_frames["stats"])
        if "stats" in stage_frames
        else pd.DataFrame(columns=[KEY, "surface_holes", "etiv"])
    )
    frames = {group: read_table(path)[0] for group, path in tables.items()}
    checks = build_checks(subjects, report, stage_frames, fs_qc, frames, QcSettings.from_config(qc))
    # The manifest lives in outdir: its cache paths are relative to it (docs/contracts.md).
    checks["cache_dir"] = [os.path.relpath(d, outdir) if d else "" for d in checks["cache_dir"]]
    stored = checks.assign(issues=[json.dumps(i) for i in checks["issues"]])
    write_atomic(out, lambda tmp: stored.to_parquet(tmp, index=False))
    counts = checks["status"].value_counts().to_dict()
    log.info("preliminary QC: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return checks


def read_checks(path: str | Path) -> pd.DataFrame:
    """Load ``qc/checks.parquet`` (issues back as lists of (code, detail))."""
    frame = pd.read_parquet(path)
    frame["issues"] = [[tuple(i) for i in json.loads(s)] for s in frame["issues"]]
    frame["reasons"] = [list(r) for r in frame["reasons"]]
    return frame


def outlier_counts(
    norm_stats: Mapping[str, str | Path], tables: Mapping[str, pd.DataFrame], threshold: float
) -> pd.Series:
    """Per subject, the normalised values with ``|z| > threshold`` over all feature groups.

    The values are normalised again from the raw tables with each group's fitted statistics
    (``{group}.norm.json``) but without ``normalize.clip``: the clipped ``{group}.z.parquet``
    would hold no value above a threshold at or beyond the clip.
    """
    z = [
        replace(Normalizer.from_json(norm_stats[g]), clip=None).apply(tables[g]) for g in norm_stats
    ]
    return count_outliers(z, threshold)


def write_manifest(
    qc: Mapping,
    evaluation: Mapping,
    checks: str | Path,
    norm_stats: Mapping[str, str | Path],
    tables: Mapping[str, str | Path],
    out: str | Path,
    failures: str | Path,
    distributions: str | Path,
    montage: str | Path,
) -> pd.DataFrame:
    """Step 3: outliers, final statuses, ``manifest.parquet`` and the QC report assets.

    ``qc``: the ``qc`` keys of :data:`damt.qc.checks.QC_KEYS` ``["manifest"]``, ``evaluation``:
    the config's ``evaluation`` section (the held-out split, column ``split``; the rule's params).
    """
    settings = QcSettings.from_config(qc)
    raw = {group: read_table(p)[0] for group, p in tables.items()}
    final = add_outliers(
        read_checks(checks), outlier_counts(norm_stats, raw, settings.outlier_z), settings
    )
    final["split"] = split_from_config(final, evaluation)
    manifest = manifest_frame(final)
    write_atomic(out, lambda tmp: manifest.to_parquet(tmp, index=False))
    write_failures(manifest, failures)
    plot_distributions(
        measure_frame(manifest, raw, REPORT_MEASURES), distributions, settings.outlier_z
    )
    plot_montage(manifest, Path(out).parent, montage, qc["montage_subjects"])
    counts = manifest["status"].value_counts().to_dict()
    log.info("manifest: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return manifest
