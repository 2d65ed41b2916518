"""QC checks and the manifest: issues, severities, availability flags, outliers, report assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from damt.features.tables import cohort_frame
from damt.qc.checks import QcSettings, add_outliers, build_checks, count_outliers, manifest_frame
from damt.qc.report import measure_frame, plot_distributions, plot_montage, write_failures
from damt.qc.severity import severity_of, status_of
from tests.conftest import qc_settings

GOOD_VOLUME = {
    "voxel_size": [1.0, 1.0, 1.0],
    "shape": [256, 256, 256],
    "intensity_p1_p50_p99": [40.0, 90.0, 112.0],
    "labels_present": [2, 17, 41],
    "unexpected_labels": {},
}


def summary(stage_rows: list[dict]) -> pd.DataFrame:
    rows = []
    for r in stage_rows:
        rows.append(
            {
                "subject_id": r["id"],
                "status": r.get("status", "ok"),
                "reason": r.get("reason", ""),
                "detail": r.get("detail", ""),
                "reused": False,
                "outputs": r.get("outputs", {}),
                "info": r.get("info", {}),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def inputs(tmp_path: Path):
    ids = ["a", "b", "c", "d"]
    subjects = pd.DataFrame({"subject_id": ids, "path": [f"/s/{i}" for i in ids]})
    report = pd.DataFrame(
        [
            {"subject_id": i, "folder": f"/s/{i}", "status": "included", "reason": "", "detail": ""}
            for i in ids
        ]
        + [
            {
                "subject_id": "bad id",
                "folder": "/s/bad id",
                "status": "flagged",
                "reason": "illegal_id",
                "detail": "not a valid subject id",
            },
            {
                "subject_id": "fsaverage5",
                "folder": "/s/fsaverage5",
                "status": "skipped",
                "reason": "excluded_pattern",
                "detail": "",
            },
        ]
    )
    cache_dir = tmp_path / "cache"
    outputs = {"image": f"{cache_dir}/image.npy", "atlas": f"{cache_dir}/atlas.npy"}
    cache = summary(
        [
            {"id": "a", "info": GOOD_VOLUME, "outputs": outputs},
            {
                "id": "b",
                "info": {
                    **GOOD_VOLUME,
                    "unexpected_labels": {"1000": 50},
                    "voxel_size": [2.0, 2.0, 2.0],
                },
                "outputs": outputs,
            },
            {"id": "c", "status": "failed", "reason": "grid_mismatch", "detail": "size differs"},
            {"id": "d", "info": GOOD_VOLUME, "outputs": outputs},
        ]
    )
    stats = summary(
        [
            {"id": "a", "info": {"fs_version": "7.2.0"}},
            {"id": "b", "status": "failed", "reason": "stats_missing", "detail": "no stats/"},
            {"id": "c"},
            {"id": "d", "info": {"file_errors": {"wmparc.stats": "wmparc.stats:70: bad row"}}},
        ]
    )
    radiomics = summary([{"id": i} for i in ids])
    fs_qc = pd.DataFrame(
        {
            "subject_id": ["a", "c", "d"],
            "surface_holes": [29.0, 12.0, 450.0],
            "etiv": [1.5e6, 1.4e6, 3.1e6],
        }
    )
    morph = cohort_frame(ids, {"a": {"x": 1.0}, "c": {"x": 2.0}, "d": {"x": 3.0}}, ["x"])
    rad = cohort_frame(ids, {i: {"t": 1.0} for i in ids}, ["t"])
    return (
        subjects,
        report,
        {"cache": cache, "stats": stats, "radiomics": radiomics},
        fs_qc,
        {"morphometry_global": morph, "radiomics": rad},
    )


def test_severity_defaults_and_overrides():
    assert severity_of("cache:grid_mismatch", {}) == "fail"
    assert severity_of("discovery:illegal_id", {}) == "fail"
    assert severity_of("stats:stats_missing", {}) == "warn"
    assert severity_of("qc:unexpected_labels", {"qc:unexpected_labels": "ignore"}) == "ignore"
    assert status_of([], {}) == "pass"
    assert status_of(["qc:etiv", "cache:volume_unreadable"], {}) == "fail"
    assert status_of(["qc:etiv"], {"qc:etiv": "fail"}) == "fail"


def test_checks_statuses_and_reasons(inputs):
    checks = build_checks(*inputs, qc_settings(expected_labels=[]))
    rows = checks.set_index("subject_id")
    assert list(checks.subject_id) == ["a", "b", "bad id", "c", "d"]  # skipped ones absent
    assert rows.loc["a", "status"] == "pass" and rows.loc["a", "reasons"] == []
    assert rows.loc["a", "has_cache"] and rows.loc["a", "cache_dir"].endswith("cache")
    assert rows.loc["a", "fs_version"] == "7.2.0"
    assert rows.loc["b", "status"] == "warn"
    assert set(rows.loc["b", "reasons"]) == {
        "stats:stats_missing",
        "qc:voxel_size",
        "qc:unexpected_labels",
        "features:morphometry_global_missing",
    }
    assert "1000 (50 voxels)" in rows.loc["b", "detail"]
    assert rows.loc["c", "status"] == "fail" and "cache:grid_mismatch" in rows.loc["c", "reasons"]
    assert not rows.loc["c", "has_cache"]
    assert rows.loc["bad id", "status"] == "fail"
    assert rows.loc["bad id", "reasons"] == ["discovery:illegal_id"]
    assert set(rows.loc["d", "reasons"]) == {"stats:file_errors", "qc:surface_holes", "qc:etiv"}
    assert "Euler number -898" in rows.loc["d", "detail"]
    assert rows.loc["d", "has_morphometry_global"] and not rows.loc["b", "has_morphometry_global"]
    assert rows.loc["b", "has_radiomics"] and not rows.loc["bad id", "has_radiomics"]


def test_missing_expected_labels_come_from_the_qc_settings(inputs):
    """The cache records the labels present; which are expected is a QC setting."""
    rows = build_checks(*inputs, qc_settings(expected_labels=[2, 17, 41])).set_index("subject_id")
    assert "qc:missing_labels" not in rows.loc["a", "reasons"]
    rows = build_checks(*inputs, qc_settings(expected_labels=[2, 53, 17, 54])).set_index(
        "subject_id"
    )
    assert rows.loc["a", "status"] == "warn" and rows.loc["a", "reasons"] == ["qc:missing_labels"]
    assert "qc:missing_labels: expected labels absent: [53, 54]" in rows.loc["a", "detail"]
    assert "qc:missing_labels" not in rows.loc["c", "reasons"]  # failed cache: no measures
    severity = {"qc:missing_labels": "fail"}
    s = qc_settings(expected_labels=[53], severity=severity)
    assert build_checks(*inputs, s).set_index("subject_id").loc["a", "status"] == "fail"


def test_severity_override_changes_status(inputs):
    s = qc_settings(expected_labels=[], severity={"qc:voxel_size": "fail"})
    rows = build_checks(*inputs, s).set_index("subject_id")
    assert rows.loc["b", "status"] == "fail"
    s = qc_settings(
        expected_labels=[],
        severity={"qc:surface_holes": "ignore", "qc:etiv": "ignore", "stats:file_errors": "ignore"},
    )
    rows = build_checks(*inputs, s).set_index("subject_id")
    assert rows.loc["d", "status"] == "pass" and rows.loc["d", "reasons"] == []


def test_outliers_turn_pass_into_warn(inputs):
    checks = build_checks(*inputs, qc_settings(expected_labels=[]))
    z = cohort_frame(
        ["a", "b", "d"],
        {"a": {f"f{i}": 9.0 for i in range(7)}, "b": {"f0": -6.0, "f1": np.nan}},
        [f"f{i}" for i in range(7)],
    )
    counts = count_outliers([z], threshold=5.0)
    assert counts.to_dict() == {"a": 7, "b": 1, "d": 0}
    final = manifest_frame(
        add_outliers(checks, counts, qc_settings(expected_labels=[], max_outliers=5)).assign(
            split="train"
        )
    )
    rows = final.set_index("subject_id")
    assert rows.loc["a", "status"] == "warn" and rows.loc["a", "reasons"] == ["qc:outliers"]
    assert rows.loc["a", "n_outliers"] == 7 and rows.loc["c", "n_outliers"] == 0
    assert "qc:outliers" not in rows.loc["b", "reasons"]


def test_report_assets(inputs, tmp_path: Path):
    checks = build_checks(*inputs, qc_settings(expected_labels=[]))
    manifest = manifest_frame(
        add_outliers(checks, pd.Series(dtype="int64"), qc_settings(expected_labels=[])).assign(
            split="train"
        )
    )
    failures = write_failures(manifest, tmp_path / "failures.tsv")
    assert set(failures.subject_id) == {"b", "bad id", "c", "d"}
    assert "discovery:illegal_id" in (tmp_path / "failures.tsv").read_text()
    measures = measure_frame(manifest, inputs[4], ["etiv", "surface_holes", "x", "absent"])
    assert list(measures.columns) == [
        "subject_id",
        "status",
        "segmenter",
        "etiv",
        "surface_holes",
        "x",
    ]
    plot_distributions(measures, tmp_path / "dist.png", outlier_z=3.0)
    assert (tmp_path / "dist.png").read_bytes()[:4] == b"\x89PNG"
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    np.save(
        cache_dir / "image.npy",
        np.random.default_rng(0).random((20, 24, 22), np.float32).astype(np.float16),
    )
    np.save(
        cache_dir / "atlas.npy",
        np.random.default_rng(1).integers(0, 5, (20, 24, 22)).astype(np.uint8),
    )
    plot_montage(manifest, "/", tmp_path / "montage.png", n_subjects=3)
    assert (tmp_path / "montage.png").stat().st_size > 1000


def test_each_qc_key_is_read_by_a_rule():
    """Every ``qc`` key of the schema is a param of the rule(s) that use it, and only of those."""
    from damt.config import load_schema
    from damt.qc.checks import QC_KEYS, qc_params

    schema_keys = set(load_schema()["properties"]["qc"]["properties"])
    assert set().union(*QC_KEYS.values()) == schema_keys
    assert (
        "outlier_z" not in QC_KEYS["qc_checks"] and "montage_subjects" not in QC_KEYS["qc_checks"]
    )
    qc = {key: f"value of {key}" for key in schema_keys}
    assert qc_params(qc, "manifest") == {k: qc[k] for k in QC_KEYS["manifest"]}
    s = QcSettings.from_config(
        qc_params({**qc, "outlier_z": 3.0, "max_outliers": 1, "severity": {}}, "manifest")
    )
    # Keys the manifest rule does not read are not set (the schema holds their defaults).
    assert (s.outlier_z, s.max_outliers) == (3.0, 1) and s.expected_labels is None


def test_outliers_are_counted_before_clipping(tmp_path: Path):
    """normalize.clip <= qc.outlier_z must not hide the outliers (the z tables are clipped)."""
    from damt.features.normalize import fit_normalizer
    from damt.qc.steps import outlier_counts

    ids = ["s0", "s1", "s2", "s3"]
    values = {"s0": {"a": 1.0, "b": 1.0}, "s1": {"a": 2.0, "b": 2.0}, "s2": {"a": 3.0, "b": 3.0}}
    raw = cohort_frame(ids, {**values, "s3": {"a": 100.0, "b": -50.0}}, ["a", "b"])
    norm = fit_normalizer(raw, ["s0", "s1", "s2"], clip=3.0)
    norm.to_json(tmp_path / "g.norm.json")
    assert count_outliers([norm.apply(raw)], threshold=5.0).to_dict()["s3"] == 0  # clipped
    counts = outlier_counts({"g": tmp_path / "g.norm.json"}, {"g": raw}, threshold=5.0)
    assert counts.to_dict() == {"s0": 0, "s1": 0, "s2": 0, "s3": 2}


def test_unknown_severity_code_is_refused_with_the_known_ones():
    """Issue 18, case 7: a misspelt qc.severity code was silently ignored."""
    from damt.qc.severity import KNOWN_CODES

    with pytest.raises(ValueError, match=r"unknown issue code\(s\) 'qc:surface_hole'") as err:
        QcSettings.from_config({"severity": {"qc:surface_hole": "fail", "qc:etiv": "warn"}})
    assert "qc:surface_holes" in str(err.value) and "'qc:etiv'" not in str(err.value)
    assert {"qc:stats_subject_mismatch", "qc:multiframe", "qc:empty_atlas"} <= set(KNOWN_CODES)
    QcSettings.from_config({"severity": {"cache:error:MemoryError": "warn"}})  # unexpected errors


def test_recon_facts_and_failed_recons_reach_the_manifest(inputs):
    subjects, report, summaries, fs_qc, tables = inputs
    subjects = subjects.assign(
        segmenter="freesurfer",
        segmenter_version="7.2.0",
        fs_version="7.2.0",
        recon_hours="2.950",
        participant=["", "P1", "P1", "d"],
    )
    failed = {
        "subject_id": "e.long.base",
        "folder": "/s/e.long.base",
        "status": "flagged",
        "reason": "recon_failed",
        "detail": "freesurfer: scripts/recon-all.error exists: ERROR: mri_ca_register failed",
    }
    report = pd.concat([report, pd.DataFrame([failed])], ignore_index=True)
    checks = build_checks(
        subjects, report, summaries, fs_qc, tables, qc_settings(expected_labels=[])
    )
    final = add_outliers(checks, pd.Series(dtype="int64"), qc_settings(expected_labels=[]))
    rows = manifest_frame(final.assign(split="train")).set_index("subject_id")
    assert rows.loc["c", "fs_version"] == "7.2.0"  # no stats version: discovery's
    assert (rows.loc["a", "segmenter"], rows.loc["a", "recon_hours"]) == ("freesurfer", "2.950")
    assert rows.loc["a", "participant"] == "a"  # no participant known: the subject id
    assert rows.loc["b", "participant"] == rows.loc["c", "participant"] == "P1"
    failed = rows.loc["e.long.base"]
    assert failed["status"] == "fail" and failed["reasons"] == ["discovery:recon_failed"]
    assert "mri_ca_register failed" in failed["detail"] and failed["participant"] == "base"
    assert rows["participant"].map(type).eq(str).all()


def test_mixed_segmenters_warn_and_split_the_qc_page(inputs, tmp_path: Path):
    subjects, report, summaries, fs_qc, tables = inputs
    subjects = subjects.assign(segmenter=["freesurfer", "freesurfer", "freesurfer", "fastsurfer"])
    checks = build_checks(
        subjects, report, summaries, fs_qc, tables, qc_settings(expected_labels=[])
    )
    rows = checks.set_index("subject_id")
    assert "qc:mixed_segmenters" in rows.loc["d", "reasons"]
    assert "freesurfer 3, fastsurfer 1" in rows.loc["d", "detail"]
    assert not any("qc:mixed_segmenters" in r for r in rows.drop("d")["reasons"])
    assert severity_of("qc:mixed_segmenters", {}) == "warn"
    one = build_checks(subjects.assign(segmenter="fastsurfer"), report, summaries, fs_qc, tables,
                       qc_settings(expected_labels=[]))  # fmt: skip
    assert not any("qc:mixed_segmenters" in r for r in one["reasons"])
    final = add_outliers(checks, pd.Series(dtype="int64"), qc_settings(expected_labels=[]))
    manifest = manifest_frame(final.assign(split="train"))
    measures = measure_frame(manifest, tables, ["etiv"])
    assert measures.set_index("subject_id").loc["d", "segmenter"] == "fastsurfer"
    plot_distributions(measures, tmp_path / "dist.png", outlier_z=3.0)
    assert (tmp_path / "dist.png").read_bytes()[:4] == b"\x89PNG"
