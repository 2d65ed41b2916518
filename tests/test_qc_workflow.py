"""Radiomics, cache, normalisation and the manifest through real Snakemake runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from damt.features.normalize import Normalizer
from damt.features.tables import read_metadata, read_table
from damt.paths import ResultPaths
from tests.conftest import (
    QUICK,
    UPSTREAM_SUBJECTS,
    Workdir,
    jobs_of,
    run_snakemake,
    workflow_config,
    write_radiomics_params,
)

pytestmark = pytest.mark.slow

# Two ROIs keep radiomics quick; the default four are exercised by test_radiomics.
ROIS = {
    "whole_brain": ["nonzero"],
    "subcortical_gm": [10, 11, 12, 13, 17, 18, 49, 50, 51, 52, 53, 54],
}


def manifest_target(results: Path) -> str:
    return str(results / "manifest.parquet")


def test_manifest_with_a_corrupt_subject(upstream_copy: Workdir):
    """One unreadable volume fails that subject with a reason; everyone else goes on."""
    wd, results = upstream_copy, upstream_copy.results
    bad = wd.own_subject("sub-004") / "mri" / "aparc+aseg.mgz"
    bad.write_bytes(bad.read_bytes()[:5000])
    target = manifest_target(results)
    jobs = jobs_of(wd.dry_run(target))
    per_subject = ("stats", "radiomics", "cache")
    assert {r: jobs[r] for r in per_subject} == dict.fromkeys(per_subject, 1)  # sub-004's only
    wd.snakemake("--cores", "2", "--keep-going", target)

    manifest = pd.read_parquet(results / "manifest.parquet").set_index("subject_id")
    assert list(manifest.index) == UPSTREAM_SUBJECTS
    bad_row = manifest.loc["sub-004"]
    assert bad_row["status"] == "fail" and not bad_row["has_cache"]
    assert "cache:volume_unreadable" in bad_row["reasons"]
    assert "radiomics:volume_unreadable" in bad_row["reasons"]
    assert "aparc+aseg.mgz" in bad_row["detail"]
    assert bad_row["has_morphometry_global"]  # its stats are fine
    good = manifest.drop(index="sub-004")
    assert (good["status"] == "pass").all() and good["has_cache"].all()
    assert all(not Path(d).is_absolute() for d in good["cache_dir"])
    assert all((results / d / "image.npy").is_file() for d in good["cache_dir"])

    # Normalisation: fitted on the five passing subjects, the failing one still gets rows.
    z, meta = read_table(ResultPaths(str(results)).normalized_table("radiomics"))
    assert list(z.subject_id) == list(manifest.index)
    assert z.set_index("subject_id").loc["sub-004"].isna().all()
    norm = Normalizer.from_json(results / "features" / "radiomics.norm.json")
    assert norm.n_fit == 5 and meta["normalization"]["n_fit"] == 5
    zz = z.set_index("subject_id").drop(index="sub-004")
    np.testing.assert_allclose(zz.mean().to_numpy(), 0.0, atol=1e-5)
    local = Normalizer.from_json(results / "features" / "morphometry_local.norm.json")
    assert local.dropped  # constant aseg rows (e.g. Left-vessel-like zero rows) are listed

    failures = pd.read_csv(results / "qc" / "failures.tsv", sep="\t")
    assert failures.subject_id.tolist() == ["sub-004"]
    for name in ("distributions.png", "montage.png"):
        assert (results / "qc" / name).stat().st_size > 1000
    radiomics_meta = read_metadata(ResultPaths(str(results)).feature_table("radiomics"))
    assert radiomics_meta["failed"]["sub-004"].startswith("volume_unreadable")

    # A QC setting reruns only the rules that read it (their params), and never the cache;
    # a stage's thread count reruns nothing.
    override = wd.override()
    radiomics, cache = override["radiomics"], override["cache"]

    def planned(threads: int = 1, **qc) -> dict[str, int]:
        wd.set(
            radiomics={**radiomics, "threads": threads}, cache={**cache, "threads": threads}, qc=qc
        )
        return jobs_of(wd.dry_run(target))

    assert planned(threads=2) == {}
    assert planned(montage_subjects=2, outlier_z=4.0, max_outliers=1) == {"manifest": 1}
    assert planned(expected_labels=[2, 41, 53]) == {"qc_checks": 1, "normalize": 3, "manifest": 1}


def test_cohort_of_one_stops_at_normalisation_with_a_clear_error(demo_cohort: Path, tmp_path: Path):
    root = tmp_path / "one"
    root.mkdir()
    shutil.copytree(demo_cohort / "sub-001", root / "sub-001")
    radiomics = {"rois": ROIS, "params": str(write_radiomics_params(tmp_path / "r.yaml"))}
    override = workflow_config(
        tmp_path, [{"path": str(root)}], radiomics=radiomics, cache=QUICK["cache"]
    )
    results = tmp_path / "results"
    proc = run_snakemake(
        "--cores",
        "2",
        "--keep-going",
        manifest_target(results),
        "--configfile",
        str(override),
        check=False,
    )
    assert proc.returncode != 0
    logs = "".join(p.read_text() for p in (results / "logs" / "normalize").glob("*.log"))
    assert "1 subject(s) pass QC, at least 2 are needed" in logs
    # Everything computed before the failure is kept.
    assert Path(ResultPaths(str(results)).feature_table("radiomics")).is_file()
    assert (results / "qc" / "checks.parquet").is_file()
    summary = pd.read_csv(results / "cache" / "shards" / "sub-001.tsv", sep="\t")
    assert summary.status.tolist() == ["ok"]
