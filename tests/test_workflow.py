"""The whole workflow through real Snakemake runs: default config, incremental reruns, faults."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from damt.demo.cohort import generate_cohort
from damt.features import FEATURE_GROUPS
from damt.paths import ResultPaths
from damt.probe import TSV_COLUMNS
from tests.conftest import BIN, REPO, SHARED_SUBJECTS, jobs_of, run_snakemake, workflow_config

pytestmark = pytest.mark.slow

PER_SUBJECT = ("stats", "radiomics", "cache")
COHORT = ("morphometry_tables", "radiomics_table", "qc_checks", "normalize", "manifest")
# Small and quick: two ROIs, a small cache, two epochs of the tiny model, age only.
QUICK = {
    "radiomics": {"rois": {"whole_brain": ["nonzero"], "cerebral_wm": [2, 41]}},
    "cache": {"min_size": 96},
    "pretrain": {
        "preset": "tiny",
        "epochs": 2,
        "warmup_epochs": 1,
        "batch_size_per_gpu": 2,
        "base_lr": 0.05,
        "num_workers": 0,
        "save_every": 1,
        "log_every_steps": 1,
        "gpus": 0,
        "threads": 2,
    },
    "probe": {"targets": [{"name": "age", "type": "regression"}], "folds": 4, "inner_folds": 3},
}


def shards_planned(stdout: str, rule: str) -> set[str]:
    """Shard wildcards of a rule's planned jobs in a dry run (indented lines after the rule)."""
    found = set()
    for m in re.finditer(rf"^(?:local)?rule {rule}:\n((?:[ \t]+.*\n)+)", stdout, re.M):
        w = re.search(r"wildcards: shard=([A-Za-z0-9._-]+)", m.group(1))
        if w:
            found.add(w.group(1))
    return found


def last_plan(results: Path) -> str:
    """The pretrain job's most recent plan line."""
    lines = (results / "logs" / "pretrain" / "default.log").read_text().splitlines()
    return [ln for ln in lines if "pretrain plan:" in ln][-1]


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc), whatever session they started."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def snapshot(results: Path, subject_ids) -> dict[str, tuple[bytes, int]]:
    files = [
        p for sid in subject_ids for p in (results / "subjects" / sid).rglob("*") if p.is_file()
    ]
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.fixture(scope="module")
def cohort6(tmp_path_factory) -> Path:
    """Six synthetic subjects; tests start with four and add the other two."""
    out = tmp_path_factory.mktemp("cohort6") / "all"
    generate_cohort(out, 6, seed=11)
    return out


def test_default_config_dry_run_and_lint(tmp_path: Path, demo_cohort: Path):
    """snakemake -n and --lint on config/config.yaml (demo generation pointed at tmp)."""
    dirs = [{"path": str(demo_cohort)}, {"path": str(SHARED_SUBJECTS), "optional": True}]
    override = tmp_path / "o.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "outdir": str(tmp_path / "results"),
                "subjects": {"dirs": dirs},
                "demo": {"enabled": False},
                "probe": {"phenotypes": str(demo_cohort / "phenotypes.tsv")},
            }
        )
    )
    out = run_snakemake("-n", "--configfile", str(override)).stdout
    jobs = jobs_of(out)
    n = len([p for p in demo_cohort.iterdir() if p.is_dir()])
    n += 2 if (SHARED_SUBJECTS / "bert").is_dir() else 0  # bert and fsaverage (exclude: [])
    assert {r: jobs[r] for r in PER_SUBJECT} == {r: n for r in PER_SUBJECT}
    assert jobs["normalize"] == 3
    for rule in (
        "morphometry_tables",
        "radiomics_table",
        "qc_checks",
        "manifest",
        "pretrain",
        "training_report",
        "probe",
        "all",
    ):
        assert jobs[rule] == 1, rule
    lint = run_snakemake("--lint", "--configfile", str(override), check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_incremental_reruns(cohort6: Path, tmp_path: Path):
    subjects = tmp_path / "subjects"
    subjects.mkdir()
    for sid in ("sub-001", "sub-002", "sub-003", "sub-004"):
        shutil.copytree(cohort6 / sid, subjects / sid)
    params = tmp_path / "radiomics.yaml"
    shutil.copy(REPO / "config" / "radiomics.yaml", params)
    override = workflow_config(
        tmp_path,
        [{"path": str(subjects)}],
        **{
            **QUICK,
            "radiomics": {**QUICK["radiomics"], "params": str(params)},
            "probe": {**QUICK["probe"], "phenotypes": str(cohort6 / "phenotypes.tsv")},
        },
    )
    args = ("--configfile", str(override))
    results = tmp_path / "results"
    run_snakemake("--cores", "2", *args)
    assert (results / "pretrain" / "default" / "encoder.safetensors").is_file()
    # Four subjects: sub-001 and sub-004 are held out by hash (they never pretrain), and the
    # probe has too few subjects for its inner search: it says so instead of scoring.
    manifest = pd.read_parquet(results / "manifest.parquet").set_index("subject_id")
    assert list(manifest["split"]) == ["holdout", "train", "train", "holdout"]
    probe = pd.read_csv(results / "probe" / "default" / "probe.tsv", sep="\t")
    assert list(probe.columns) == TSV_COLUMNS
    card = json.loads((results / "pretrain" / "default" / "model_card.json").read_text())
    assert card["data"]["subjects"] == 2
    assert card["data"]["evaluation_split"]["held_out_subjects"] == 2
    old = ["sub-001", "sub-002", "sub-003", "sub-004"]
    before = snapshot(results, old)
    assert "Nothing to be done" in run_snakemake("-n", *args).stdout

    # Two new subjects: only their per-subject jobs, plus the cohort stages.
    for sid in ("sub-005", "sub-006"):
        shutil.copytree(cohort6 / sid, subjects / sid)
    dry = run_snakemake("-n", *args).stdout
    jobs = jobs_of(dry)
    assert {r: jobs[r] for r in PER_SUBJECT} == {r: 2 for r in PER_SUBJECT}
    for rule in PER_SUBJECT:
        assert shards_planned(dry, rule) == {"sub-005", "sub-006"}, rule
    assert {r: jobs[r] for r in COHORT} == {**dict.fromkeys(COHORT, 1), "normalize": 3}
    assert jobs["pretrain"] == 1 and jobs["probe"] == 1  # retrain: cohort (the default)
    run_snakemake("--cores", "2", *args)
    assert {p: v for p, v in snapshot(results, old).items() if p in before} == before
    manifest = pd.read_parquet(results / "manifest.parquet")
    assert list(manifest["subject_id"]) == [*old, "sub-005", "sub-006"]
    assert re.search(
        r"pretrain plan: train \(.*subjects changed \(retrain: cohort\)\)", last_plan(results)
    )
    assert list((results / "pretrain" / "default" / "superseded").iterdir())

    # A radiomics parameter: radiomics and what depends on it, nothing else.
    params.write_text(params.read_text().replace("binWidth: 5", "binWidth: 6"))
    jobs = jobs_of(run_snakemake("-n", *args).stdout)
    assert jobs["radiomics"] == 6 and jobs["radiomics_table"] == 1
    assert "stats" not in jobs and "cache" not in jobs and "morphometry_tables" not in jobs
    run_snakemake("--cores", "2", *args)
    assert "pretrain plan: export (same training subjects and settings" in last_plan(results)

    # A removed subject: the cohort stages run again without it; no per-subject job runs.
    shutil.rmtree(subjects / "sub-006")
    jobs = jobs_of(run_snakemake("-n", *args).stdout)
    assert not set(jobs) & set(PER_SUBJECT)
    assert jobs["manifest"] == 1
    run_snakemake("--cores", "2", *args)
    manifest = pd.read_parquet(results / "manifest.parquet")
    assert "sub-006" not in set(manifest["subject_id"])
    for group in FEATURE_GROUPS:
        table = pd.read_parquet(ResultPaths(str(results)).feature_table(group))
        assert "sub-006" not in set(table["subject_id"])


@pytest.mark.parametrize("kill", ["tree", "group"])
def test_killed_pretraining_resumes(cohort6: Path, tmp_path: Path, kill: str):
    """``tree``: every process of the run at once (a node failure, SLURM's cgroup kill).
    ``group`` (issue 18, case 8): kill -9 of Snakemake's process group only; the trainers, in
    sessions of their own, must die with it instead of keeping the run lock."""
    subjects = tmp_path / "subjects"
    subjects.mkdir()
    for sid in ("sub-001", "sub-002", "sub-003", "sub-004"):
        shutil.copytree(cohort6 / sid, subjects / sid)
    override = workflow_config(
        tmp_path,
        [{"path": str(subjects)}],
        **{**QUICK, "pretrain": {**QUICK["pretrain"], "epochs": 6}},
    )
    results = tmp_path / "results"
    encoder = results / "pretrain" / "default" / "encoder.safetensors"
    checkpoint = results / "pretrain" / "default" / "checkpoints" / "checkpoint_0001.pt"
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--cores",
        "2",
        str(encoder),
        "--configfile",
        str(override),
    ]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    (tmp_path / "config").symlink_to(REPO / "config")
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not checkpoint.exists():
            assert proc.poll() is None, "snakemake ended before the first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
            time.sleep(1)
    finally:
        tree = process_tree(proc.pid)
        if kill == "tree":
            # Like a node failure or SLURM's cgroup kill: every process of the run at once,
            # including torchrun's workers (which run in a session of their own).
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if kill == "group":
        # Everything that was started for the run dies with it, trainers included.
        deadline = time.monotonic() + 30
        alive = [pid for pid in tree if Path(f"/proc/{pid}").exists()]
        while alive and time.monotonic() < deadline:
            time.sleep(0.5)
            alive = [
                pid
                for pid in alive
                if Path(f"/proc/{pid}").exists()
                and "(Z)" not in Path(f"/proc/{pid}/stat").read_text().replace(") Z", "(Z)")
            ]
        assert not alive, f"processes survived the kill of Snakemake's group: {alive}"
    assert not encoder.exists()
    # What a user does after a killed run: release Snakemake's lock, then rerun the job.
    run_snakemake("--unlock", "--configfile", str(override))
    run_snakemake("--cores", "2", "--rerun-incomplete", str(encoder), "--configfile", str(override))
    assert encoder.is_file()
    assert "pretrain plan: resume (interrupted run" in last_plan(results)
    log = (results / "logs" / "pretrain" / "default.log").read_text()
    assert re.search(r"resuming \S+ after epoch [1-5]\b", log)
    epochs = [
        int(m)
        for m in re.findall(
            r'"epoch": (\d+)', (results / "pretrain" / "default" / "metrics.jsonl").read_text()
        )
    ]
    assert sorted(epochs) == list(range(6))


def test_more_gpus_than_resources_is_explained(tmp_path: Path, demo_cohort: Path):
    override = workflow_config(tmp_path, [{"path": str(demo_cohort)}], pretrain={"gpus": 2})
    proc = run_snakemake("-n", "--resources", "gpu=1", "--configfile", str(override), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "pretrain.gpus is 2 but this job was given gpu=1" in out
    assert "--resources gpu=2" in out
    ok = run_snakemake("-n", "--resources", "gpu=2", "--configfile", str(override))
    assert "pretrain" in jobs_of(ok.stdout)
