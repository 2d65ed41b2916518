"""Morphometry tables: the feature catalog, long → wide rows, mixed-version cohorts, NaN reasons."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from damt.config import ConfigError, load_config
from damt.features.morphometry import (
    FILE_ERROR,
    FILE_MISSING,
    NO_RESULT,
    VALUE_MISSING,
    VALUE_NONFINITE,
    CatalogError,
    SubjectInput,
    build_morphometry_tables,
    cohort_table,
    load_catalog,
    parse_catalog,
)
from damt.features.tables import read_metadata
from damt.paths import ResultPaths
from damt.results import FAILED, OK
from damt.stages.stats import LONG_FILE, StatsStage
from damt.stages.store import SubjectTask, read_result, run_tasks
from tests.conftest import REPO, qc_settings, run_stage_shards
from tests.fs_versions import make_fs5_subject, make_fs6_subject

DEFAULT_CATALOG = REPO / "config" / "morphometry_catalog.yaml"
N_GLOBAL, N_LOCAL = 424, 41


def run_cohort(tmp_path: Path, folders: dict[str, Path], catalog: Path = DEFAULT_CATALOG):
    """Discovery, the stats stage of every shard and the tables, as the workflow runs them."""
    root = tmp_path / "subjects"
    root.mkdir(exist_ok=True)
    for sid, folder in folders.items():
        if not (root / sid).exists():
            (root / sid).symlink_to(folder, target_is_directory=True)
    outdir = tmp_path / "results"
    summaries = run_stage_shards(StatsStage(), root, outdir, required_files=(), exclude=())
    outputs = {g: outdir / "features" / f"morphometry_{g}.parquet" for g in ("global", "local")}
    tables = build_morphometry_tables(
        summaries, ResultPaths(str(outdir)).discovery_subjects(), catalog, outputs
    )
    meta = {g: read_metadata(p) for g, p in outputs.items()}
    for g, p in outputs.items():
        pd.testing.assert_frame_equal(pd.read_parquet(p), tables[g])
    return tables, meta, outdir


def features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("subject_id")


def write_catalog(tmp_path: Path, global_features: list, local_features: list | None = None):
    local = local_features or [{"source": "aseg", "structures": ["CSF"], "columns": ["Volume_mm3"]}]
    data = {
        "version": "test-1",
        "groups": {"global": {"features": global_features}, "local": {"features": local}},
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- the default catalog -------------------------------------------------------------------------


def test_default_catalog_is_the_configured_one_and_has_the_documented_size():
    config = load_config(REPO / "config" / "config.yaml")
    assert Path(config["morphometry"]["catalog"]) == Path("config/morphometry_catalog.yaml")
    catalog = load_catalog(DEFAULT_CATALOG)
    cols = {g: [f.column for f in feats] for g, feats in catalog.groups.items()}
    assert (len(cols["global"]), len(cols["local"])) == (N_GLOBAL, N_LOCAL)
    assert f"{N_GLOBAL} global + {N_LOCAL} local" in DEFAULT_CATALOG.read_text()
    for name in (
        "EstimatedTotalIntraCranialVol",
        "BrainSegVol",
        "lhCerebralWhiteMatterVol",
        "lh_MeanThickness_thickness",
        "rh_WhiteSurfArea_area",
        "lh_bankssts_thickness",
        "rh_insula_area",
        "lh_superiorfrontal_volume",
        "lh_precuneus_thicknessstd",
    ):
        assert name in cols["global"]
    assert {"Left-Hippocampus", "Right-Thalamus", "CC_Anterior", "CSF"} <= set(cols["local"])
    assert "Left-WM-hypointensities" not in cols["local"]
    assert len(set(cols["global"])) == N_GLOBAL


def test_default_catalog_on_bert_has_no_nan(bert: Path, tmp_path: Path):
    tables, meta, _ = run_cohort(tmp_path, {"bert": bert})
    g, loc = features(tables["global"]), features(tables["local"])
    assert g.shape == (1, N_GLOBAL) and loc.shape == (1, N_LOCAL)
    assert not g.isna().any().any() and not loc.isna().any().any()
    assert (g.dtypes == "float64").all()
    assert g.loc["bert", "EstimatedTotalIntraCranialVol"] == 1520021.264474
    assert g.loc["bert", "lh_bankssts_thickness"] == 2.805
    assert g.loc["bert", "lh_MeanThickness_thickness"] == 2.60273
    assert loc.loc["bert", "Left-Lateral-Ventricle"] == 7316.9
    m = meta["global"]
    assert m["catalog"]["version"] == "1" and len(m["catalog"]["digest"]) == 16
    assert m["n_columns"] == N_GLOBAL and m["source_files"] == [
        "aseg.stats",
        "lh.aparc.stats",
        "rh.aparc.stats",
    ]
    assert m["units"]["lh_bankssts_thickness"] == "mm"
    assert m["units"]["lh_bankssts_area"] == "mm^2"
    assert m["units"]["EstimatedTotalIntraCranialVol"] == "mm^3"
    assert m["subjects"]["bert"] == {
        "status": "complete",
        "reasons": [],
        "detail": "",
        "n_missing": 0,
        "fs_version": "7.2.0-beta",
        "segmenter": "freesurfer",
        "segmenter_version": "7.2.0-beta",
        "source_files": ["aseg.stats", "lh.aparc.stats", "rh.aparc.stats"],
    }


def test_default_catalog_on_demo_subjects_has_no_nan(demo_cohort: Path, tmp_path: Path):
    subjects = {p.name: p for p in sorted(demo_cohort.iterdir()) if p.is_dir()}
    tables, meta, _ = run_cohort(tmp_path, subjects)
    for group, n in (("global", N_GLOBAL), ("local", N_LOCAL)):
        frame = features(tables[group])
        assert frame.shape == (len(subjects), n)
        assert not frame.isna().any().any(), frame.columns[frame.isna().any()].tolist()
        assert {s["fs_version"] for s in meta[group]["subjects"].values()} == {"7.4.1"}


def test_mixed_version_cohort_lines_up(bert: Path, tmp_path: Path):
    folders = {
        "bert": bert,
        "fs5": make_fs5_subject(bert, tmp_path / "src" / "fs5"),
        "fs6": make_fs6_subject(bert, tmp_path / "src" / "fs6"),
    }
    tables, meta, _ = run_cohort(tmp_path, folders)
    for group in ("global", "local"):
        frame = features(tables[group])
        assert list(frame.index) == ["bert", "fs5", "fs6"]
        assert not frame.isna().any().any()
        # Same numbers under old spellings: every harmonised column is identical across versions.
        pd.testing.assert_series_equal(frame.loc["fs5"], frame.loc["bert"], check_names=False)
        pd.testing.assert_series_equal(frame.loc["fs6"], frame.loc["bert"], check_names=False)
    versions = {sid: s["fs_version"] for sid, s in meta["global"]["subjects"].items()}
    assert versions == {"bert": "7.2.0-beta", "fs5": "5.3.0", "fs6": "6.0.0"}


def test_wider_catalog_on_mixed_cohort_reports_what_old_versions_lack(bert: Path, tmp_path: Path):
    catalog = write_catalog(
        tmp_path,
        [
            # FreeSurfer 7 moved these two from aseg.stats to brainvol.stats.
            {
                "source": ["aseg", "brainvol"],
                "measures": ["BrainSegVolNotVentSurf", "SupraTentorialVolNotVentVox"],
            },
            {"source": "aparc.a2009s", "structures": "destrieux", "columns": ["ThickAvg"]},
            {"source": "aparc.DKTatlas", "structures": "dkt", "columns": ["SurfArea"]},
            {"source": "BA_exvivo", "structures": "ba_exvivo", "columns": ["GrayVol"]},
            {
                "source": "aparc.pial",
                "structures": "desikan",
                "columns": ["SurfArea"],
                "prefix": "pial_",
            },
            {"source": "wmparc", "structures": ["wm-lh-insula"], "columns": ["Volume_mm3"]},
        ],
    )
    folders = {
        "bert": bert,
        "fs5": make_fs5_subject(bert, tmp_path / "src" / "fs5"),
        "fs6": make_fs6_subject(bert, tmp_path / "src" / "fs6"),
    }
    tables, meta, _ = run_cohort(tmp_path, folders, catalog)
    g = features(tables["global"])
    assert g.shape[1] == 2 + 2 * (74 + 31 + 14 + 34) + 1
    assert not g.loc[["bert", "fs6"]].isna().any().any()
    pd.testing.assert_series_equal(g.loc["fs6"], g.loc["bert"], check_names=False)
    assert g.loc["bert", "BrainSegVolNotVentSurf"] == 1199378.0  # from brainvol.stats
    assert g.loc["fs6", "SupraTentorialVolNotVentVox"] == 1042551.0  # from aseg.stats
    assert "lh_G_and_S_frontomargin_thickness" in g.columns
    assert "pial_lh_bankssts_area" in g.columns and "wm-lh-insula" in g.columns

    fs5 = meta["global"]["subjects"]["fs5"]
    missing = set(g.columns[g.loc["fs5"].isna()])
    assert missing == {
        "BrainSegVolNotVentSurf",
        "SupraTentorialVolNotVentVox",
        "lh_entorhinal_exvivo_volume",
        "rh_entorhinal_exvivo_volume",
    } | {c for c in g.columns if c.startswith("pial_")}
    assert fs5["status"] == "partial" and fs5["n_missing"] == len(missing)
    assert fs5["reasons"] == [FILE_MISSING, VALUE_MISSING]
    # The 5.x names line up: DKTatlas40 and BA files are used under their FreeSurfer 7 kinds.
    assert (
        "lh.aparc.DKTatlas40.stats" in fs5["source_files"] and "lh.BA.stats" in fs5["source_files"]
    )
    ok = [c for c in g.columns if c not in missing]
    pd.testing.assert_series_equal(g.loc["fs5", ok], g.loc["bert", ok], check_names=False)


def test_malformed_file_gives_nan_columns_and_a_reason(bert: Path, tmp_path: Path):
    subj = tmp_path / "src" / "broken"
    shutil.copytree(bert / "stats", subj / "stats")
    bad = subj / "stats" / "lh.aparc.stats"
    bad.chmod(0o644)
    bad.write_text(bad.read_text().replace(" 2.805 0.451 ", " 2.805 "))
    tables, meta, outdir = run_cohort(tmp_path, {"bert": bert, "broken": subj})
    result = read_result(outdir, "broken", "stats")
    assert result.status == OK
    error = result.info["file_errors"]["lh.aparc.stats"]
    linked = tmp_path / "subjects" / "broken" / "stats" / "lh.aparc.stats"
    assert error.startswith(f"{linked}:62: row has 9 fields but '# ColHeaders' (line 61) names 10")
    g = features(tables["global"])
    nan_cols = set(g.columns[g.loc["broken"].isna()])
    assert nan_cols == {c for c in g.columns if c.startswith("lh_")}
    assert len(nan_cols) == 34 * 6 + 2
    s = meta["global"]["subjects"]["broken"]
    assert s["status"] == "partial" and s["reasons"] == [FILE_ERROR] and error in s["detail"]
    assert meta["local"]["subjects"]["broken"]["status"] == "complete"
    assert not features(tables["local"]).isna().any().any()


def test_subject_without_stats_keeps_an_all_nan_row(bert: Path, fsaverage: Path, tmp_path: Path):
    tables, meta, outdir = run_cohort(tmp_path, {"bert": bert, "fsaverage": fsaverage})
    assert read_result(outdir, "fsaverage", "stats").status == FAILED
    for group in ("global", "local"):
        frame = features(tables[group])
        assert list(frame.index) == ["bert", "fsaverage"]
        assert frame.loc["fsaverage"].isna().all() and not frame.loc["bert"].isna().any()
        s = meta[group]["subjects"]["fsaverage"]
        assert s["status"] == "missing" and s["reasons"] == ["stats_missing"]
        assert s["detail"] == f"{tmp_path / 'subjects' / 'fsaverage' / 'stats'} does not exist"


# --- the stats stage ----------------------------------------------------------------------------


def test_stage_results_and_failure_reasons(bert: Path, tmp_path: Path):
    only_curv = tmp_path / "curv"
    (only_curv / "stats").mkdir(parents=True)
    shutil.copy(bert / "stats" / "lh.curv.stats", only_curv / "stats")
    garbage = tmp_path / "garbage"
    (garbage / "stats").mkdir(parents=True)
    (garbage / "stats" / "aseg.stats").write_text("")
    (garbage / "stats" / "lh.aparc.stats").write_text("# title\nbankssts 1 2 3\n")
    tasks = [SubjectTask("bert", bert), SubjectTask("curv", only_curv), SubjectTask("g", garbage)]
    results = {r.subject_id: r for r, _ in run_tasks(StatsStage(), tasks, tmp_path / "out")}
    assert results["bert"].status == OK and results["bert"].outputs == {"long": LONG_FILE}
    assert results["bert"].info["fs_version"] == "7.2.0-beta"
    assert results["bert"].info["skipped"] == ["lh.curv.stats", "rh.curv.stats"]
    assert len(results["bert"].info["files"]) == 17 and results["bert"].info["file_errors"] == {}
    assert (results["curv"].reason, results["curv"].status) == ("stats_missing", FAILED)
    assert "found only: lh.curv.stats" in results["curv"].detail
    assert results["g"].reason == "stats_malformed"
    assert "aseg.stats:1: empty file" in results["g"].detail
    assert "lh.aparc.stats:2: data row before any '# ColHeaders' line" in results["g"].detail


def test_changed_or_added_stats_file_invalidates_the_cached_result(bert: Path, tmp_path: Path):
    subj = tmp_path / "s"
    (subj / "stats").mkdir(parents=True)
    shutil.copy(bert / "stats" / "aseg.stats", subj / "stats")
    tasks = [SubjectTask("s", subj)]
    out = tmp_path / "out"
    [(first, reused)] = run_tasks(StatsStage(), tasks, out)
    assert not reused and first.info["files"] == ["aseg.stats"]
    [(_, reused)] = run_tasks(StatsStage(), tasks, out)
    assert reused
    aseg = subj / "stats" / "aseg.stats"
    aseg.chmod(0o644)
    st = aseg.stat()
    os.utime(aseg, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    [(_, reused)] = run_tasks(StatsStage(), tasks, out)
    assert not reused
    shutil.copy(bert / "stats" / "lh.aparc.stats", subj / "stats")
    [(res, reused)] = run_tasks(StatsStage(), tasks, out)
    assert not reused and res.info["files"] == ["aseg.stats", "lh.aparc.stats"]


# --- catalog validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"source": "aseg", "measures": ["BrainSegVol"], "colour": 1}, "'colour' was unexpected"),
        ({"source": "asegg", "measures": ["BrainSegVol"]}, "unknown stats file kind 'asegg'"),
        ({"source": "aseg", "measures": ["BrainVol"]}, "'BrainVol' is not a '# Measure' name"),
        ({"source": "aparc", "structures": "desikn", "columns": ["ThickAvg"]}, "unknown set"),
        (
            {"source": "aseg", "hemispheres": ["lh"], "measures": ["BrainSegVol"]},
            "aseg is a whole-brain file",
        ),
        ({"source": ["aseg", "aparc"], "measures": ["BrainSegVol"]}, "mixes ?h.* and whole-brain"),
        ({"source": "aseg", "structures": ["CSF"]}, "groups.global.features[0]"),
        (
            {"source": "aseg", "measures": ["eTIV"], "structures": ["CSF"], "columns": ["x"]},
            "groups.global.features[0]",
        ),
    ],
)
def test_invalid_catalog_entries_are_refused(entry: dict, message: str):
    data = {
        "version": "1",
        "groups": {
            "global": {"features": [entry]},
            "local": {"features": [{"source": "aseg", "measures": ["eTIV"]}]},
        },
    }
    with pytest.raises(CatalogError) as info:
        parse_catalog(data, "cat.yaml")
    assert "cat.yaml" in str(info.value) and message in str(info.value)


def test_colliding_columns_need_a_prefix(tmp_path: Path):
    entries = [
        {"source": "aparc", "structures": ["bankssts"], "columns": ["SurfArea"]},
        {"source": "aparc.pial", "structures": ["bankssts"], "columns": ["SurfArea"]},
    ]
    with pytest.raises(
        CatalogError, match=r"column 'lh_bankssts_area'.*give one of them a `prefix`"
    ):
        load_catalog(write_catalog(tmp_path, entries))
    entries[1]["prefix"] = "pial_"
    catalog = load_catalog(write_catalog(tmp_path, entries))
    assert [f.column for f in catalog.groups["global"]] == [
        "lh_bankssts_area",
        "rh_bankssts_area",
        "pial_lh_bankssts_area",
        "pial_rh_bankssts_area",
    ]


def test_missing_group_and_unreadable_catalog(tmp_path: Path):
    with pytest.raises(CatalogError, match="'local' is a required property"):
        parse_catalog({"version": "1", "groups": {"global": {"features": []}}})
    with pytest.raises(CatalogError, match="cannot read feature catalog"):
        load_catalog(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("version: [\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(tmp_path / "bad.yaml")


def test_catalog_digest_follows_the_content(tmp_path: Path):
    a = load_catalog(write_catalog(tmp_path, [{"source": "aseg", "measures": ["eTIV"]}]))
    b = load_catalog(write_catalog(tmp_path, [{"source": "aseg", "measures": ["MaskVol"]}]))
    assert a.digest != b.digest
    same = load_catalog(write_catalog(tmp_path, [{"source": "aseg", "measures": ["eTIV"]}]))
    assert a.digest == same.digest


def test_subject_without_any_result_is_reported_as_such():
    catalog = load_catalog(DEFAULT_CATALOG)
    frame, meta = cohort_table([SubjectInput("ghost", "")], catalog, "local")
    assert (
        list(frame["subject_id"]) == ["ghost"]
        and frame.drop(columns="subject_id").isna().all().all()
    )
    assert meta["subjects"]["ghost"]["reasons"] == [NO_RESULT]
    assert meta["subjects"]["ghost"]["status"] == "missing"


def test_morphometry_config_section_refuses_unknown_keys(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"subjects": {"dirs": [{"path": "x"}]}, "morphometry": {"catalogue": "a"}})
    )
    with pytest.raises(ConfigError, match="morphometry: Additional properties are not allowed"):
        load_config(path)


# --- issue 18: non-finite values and stats of another subject ------------------------------------


def _qc_rows(outdir: Path, severity: dict | None = None) -> pd.DataFrame:
    """QC checks of a run_cohort result (stats stage only), indexed by subject id."""
    from damt.qc.checks import build_checks
    from damt.qc.steps import fs_qc_frame
    from damt.results import read_summaries

    paths = ResultPaths(str(outdir))
    summary = read_summaries(sorted((outdir / "stats" / "shards").glob("*.tsv")))
    subjects = pd.read_csv(paths.discovery_subjects(), sep="\t", dtype=str)
    report = pd.read_csv(paths.discovery_report(), sep="\t", dtype=str, keep_default_na=False)
    checks = build_checks(
        subjects,
        report,
        {"stats": summary},
        fs_qc_frame(summary),
        {},
        qc_settings(severity=severity or {}),
    )
    return checks.set_index("subject_id")


def test_nonfinite_stats_values_are_missing_with_a_reason(bert: Path, tmp_path: Path):
    """Issue 18, case 4: nan/inf tokens became ±inf in the tables, a NaN eTIV skipped the eTIV
    check and the metadata said "partial" without a reason. bert's own "-nan" (the SNR of the
    unknown row of ?h.w-g.pct.stats) stays a listed missing value, not an issue."""
    subj = tmp_path / "src" / "nanny"
    shutil.copytree(bert / "stats", subj / "stats")
    for f in (subj / "stats").glob("*.stats"):
        f.chmod(0o644)
        f.write_text(f.read_text().replace("1520021.264474", "nan"))  # every eTIV line
    aseg = subj / "stats" / "aseg.stats"
    aseg.write_text(
        aseg.read_text().replace(
            "  4508     4422.1  Left-Hippocampus", "  4508     inf  Left-Hippocampus"
        )
    )
    tables, meta, outdir = run_cohort(tmp_path, {"bert": bert, "nanny": subj})
    for frame in tables.values():
        values = features(frame).to_numpy()
        assert not np.isinf(values).any()
    local = features(tables["local"])
    assert np.isnan(local.loc["nanny", "Left-Hippocampus"]) and not local.loc["bert"].isna().any()
    s = meta["local"]["subjects"]["nanny"]
    assert s["status"] == "partial" and s["reasons"] == [VALUE_NONFINITE]
    assert "Left-Hippocampus" in s["detail"]
    info = read_result(outdir, "nanny", "stats").info
    assert "line 91: Volume_mm3 of Left-Hippocampus = inf" in info["nonfinite_values"]["aseg.stats"]
    assert "measure eTIV = nan" in info["nonfinite_values"]["aseg.stats"]
    bert_info = read_result(outdir, "bert", "stats").info
    assert "nonfinite_values" not in bert_info
    assert "SNR of unknown = nan" in bert_info["nonfinite_expected"]["lh.w-g.pct.stats"]
    rows = _qc_rows(outdir)
    assert {"qc:etiv_missing", "stats:nonfinite_values"} <= set(rows.loc["nanny", "reasons"])
    assert "eTIV is nan" in rows.loc["nanny", "detail"]
    assert rows.loc["bert", "reasons"] == []


def test_stats_of_another_subject_are_flagged(bert: Path, tmp_path: Path):
    """Issue 18, case 5: a FreeSurfer 5.x stats folder whose headers name another subject than
    the folder passed QC; it is flagged qc:stats_subject_mismatch, severity configurable."""
    fs5 = make_fs5_subject(bert, tmp_path / "src" / "fs5")
    _, _, outdir = run_cohort(tmp_path, {"bert": bert, "fs5": fs5})
    assert read_result(outdir, "fs5", "stats").info["header_subject_names"] == ["bert"]
    rows = _qc_rows(outdir)
    assert rows.loc["fs5", "reasons"] == ["qc:stats_subject_mismatch"]
    assert rows.loc["fs5", "status"] == "warn"
    assert "name subject bert, not fs5" in rows.loc["fs5", "detail"]
    assert rows.loc["bert", "reasons"] == []
    rows = _qc_rows(outdir, {"qc:stats_subject_mismatch": "fail"})
    assert rows.loc["fs5", "status"] == "fail"
