"""The stats stage and the morphometry tables through real Snakemake runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from damt.features import FEATURE_GROUPS
from damt.features.tables import read_metadata
from damt.paths import ResultPaths
from damt.results import read_summaries
from tests.conftest import run_snakemake, workflow_config

pytestmark = pytest.mark.slow

N_GLOBAL, N_LOCAL = 424, 41


def tables(results: Path) -> list[str]:
    """The stage's targets: the two morphometry tables (the rest of the workflow not needed)."""
    return [str(results / "features" / f"morphometry_{g}.parquet") for g in ("global", "local")]


def planned_jobs(*args: str) -> dict[str, int]:
    """Rule → job count of a dry run."""
    out = run_snakemake("-n", *args).stdout
    table = out[out.index("Job stats:") :]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def snapshot(results: Path, subject_ids: list[str]) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every per-subject stats file and summary of the given subjects."""
    files = []
    for sid in subject_ids:
        files += sorted((results / "subjects" / sid / "stats").iterdir())
    files += sorted((results / "stats" / "shards").glob("*.tsv"))
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def test_stats_and_tables_on_demo_bert_and_fsaverage(
    demo_cohort: Path, shared_subjects: Path, tmp_path: Path
):
    dirs = [{"path": str(demo_cohort)}, {"path": str(shared_subjects)}]
    override = workflow_config(tmp_path, dirs, subjects={"dirs": dirs, "exclude": []})
    results = tmp_path / "results"
    run_snakemake("--cores", "2", *tables(results), "--configfile", str(override))
    demo_ids = sorted(p.name for p in demo_cohort.iterdir() if p.is_dir())
    ids = sorted([*demo_ids, "bert", "fsaverage"])

    summary = read_summaries(sorted((results / "stats" / "shards").glob("*.tsv")))
    assert list(summary["subject_id"]) == ids
    fsavg = summary.set_index("subject_id").loc["fsaverage"]
    assert (fsavg["status"], fsavg["reason"]) == ("failed", "stats_missing")
    assert (summary.set_index("subject_id").drop("fsaverage")["status"] == "ok").all()
    for shard in ids:
        assert (results / "logs" / "stats" / f"{shard}.log").is_file()
        assert (results / "benchmarks" / "stats" / f"{shard}.tsv").is_file()

    for group, width in (("global", N_GLOBAL), ("local", N_LOCAL)):
        path = results / "features" / f"morphometry_{group}.parquet"
        frame = pd.read_parquet(path).set_index("subject_id")
        assert list(frame.index) == ids and frame.shape[1] == width
        assert frame.loc["fsaverage"].isna().all()
        assert not frame.drop(index="fsaverage").isna().any().any()
        meta = read_metadata(path)
        assert meta["subjects"]["fsaverage"]["reasons"] == ["stats_missing"]
        assert meta["subjects"]["bert"]["fs_version"] == "7.2.0-beta"
    # A second run has nothing to do.
    out = run_snakemake("-n", *tables(results), "--configfile", str(override)).stdout
    assert "Nothing to be done" in out


def test_a_new_subject_in_a_shard_reruns_the_shard_reusing_the_others(
    demo_copy: Path, tmp_path: Path
):
    """One shard for everyone (``n_shards: 1``): a new subject reruns the shard's job, which
    reuses the old subjects' results. (The default, one job per subject, runs only the new
    subject's jobs: tests/test_workflow.py::test_incremental_reruns.)"""
    dirs = [{"path": str(demo_copy)}]
    override = workflow_config(tmp_path, dirs, sharding={"n_shards": 1})
    results = tmp_path / "results"
    args = (*tables(results), "--configfile", str(override))
    run_snakemake("--cores", "2", *args)
    old_ids = sorted(p.name for p in demo_copy.iterdir() if p.is_dir())
    before = snapshot(results, old_ids)

    shutil.copytree(demo_copy / old_ids[0], demo_copy / "sub-900")
    jobs = planned_jobs(*args)
    assert jobs == {"morphometry_tables": 1, "stats": 1, "total": 2}
    run_snakemake("--cores", "2", *args)

    after = snapshot(results, old_ids)
    summaries = sorted((results / "stats" / "shards").glob("*.tsv"))
    summary = read_summaries(summaries).set_index("subject_id")
    assert list(summary.index) == [*old_ids, "sub-900"]
    assert summary.loc["sub-900", "status"] == "ok" and not summary.loc["sub-900", "reused"]
    # The shard's job ran again and reused the old subjects' results.
    assert summary.loc[old_ids, "reused"].all()
    changed = {p for p in after if after[p] != before[p]}
    assert changed == {str(p) for p in summaries}
    frame = pd.read_parquet(ResultPaths(str(results)).feature_table(FEATURE_GROUPS[0]))
    assert list(frame["subject_id"]) == [*old_ids, "sub-900"]
    assert not frame.drop(columns="subject_id").isna().any().any()
