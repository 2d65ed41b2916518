"""The whole workflow through real Snakemake runs: default config, incremental reruns, faults."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from damt.features import FEATURE_GROUPS
from damt.paths import ResultPaths
from damt.probe.targets import TSV_COLUMNS
from tests.conftest import (
    QUICK,
    SHARED_SUBJECTS,
    UPSTREAM_SUBJECTS,
    Workdir,
    file_checksums,
    jobs_of,
    run_snakemake,
    snakemake_command,
    subprocess_env,
    workflow_config,
)

pytestmark = pytest.mark.slow

PER_SUBJECT = ("stats", "radiomics", "cache")
COHORT = ("morphometry_tables", "radiomics_table", "qc_checks", "normalize", "manifest")
# The upstream subjects' split (a hash of each id): two held out, four that pretrain.
SPLIT = ["holdout", "train", "train", "holdout", "train", "train"]


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


def test_incremental_reruns(trained_copy: Workdir, cohort8: Path):
    """The session's finished run (six subjects), then a new subject, a removed subject and
    a changed radiomics parameter: each time only the stale jobs run."""
    wd, results = trained_copy, trained_copy.results
    assert "Nothing to be done" in wd.dry_run()
    assert (results / "pretrain" / "default" / "encoder.safetensors").is_file()
    manifest = pd.read_parquet(results / "manifest.parquet").set_index("subject_id")
    assert list(manifest.index) == UPSTREAM_SUBJECTS and list(manifest["split"]) == SPLIT
    card = json.loads((results / "pretrain" / "default" / "model_card.json").read_text())
    assert card["data"]["subjects"] == 4
    assert card["data"]["evaluation_split"]["held_out_subjects"] == 2
    # Two held out is below probe.min_holdout (20): the probe says so by scoring every feature
    # set with nested cross-validation over all six subjects instead.
    probe = pd.read_csv(results / "probe" / "default" / "probe.tsv", sep="\t")
    assert list(probe.columns) == TSV_COLUMNS
    full = probe[probe["label_fraction"] == 1.0]
    assert set(full["features"]) == {"pretrained", "random_init", "morphometry"}
    assert set(probe["protocol"]) == {"nested_cv"} and set(probe["target"]) == {"age"}
    assert (full["n_test"] == 6).all() and full["mean"].notna().all(), full
    before = snapshot(results, UPSTREAM_SUBJECTS)

    # A new subject: only its per-subject jobs, plus the cohort stages; sub-007 trains.
    wd.add_subject(cohort8 / "sub-007")
    dry = wd.dry_run()
    jobs = jobs_of(dry)
    assert {r: jobs[r] for r in PER_SUBJECT} == {r: 1 for r in PER_SUBJECT}
    for rule in PER_SUBJECT:
        assert shards_planned(dry, rule) == {"sub-007"}, rule
    assert {r: jobs[r] for r in COHORT} == {**dict.fromkeys(COHORT, 1), "normalize": 3}
    assert jobs["pretrain"] == 1 and jobs["probe"] == 1  # retrain: cohort (the default)
    # The probe and training report are planned (above) but not run: the trained run's business.
    wd.snakemake("--cores", "2", "--omit-from", "probe", "training_report")
    assert {p: v for p, v in snapshot(results, UPSTREAM_SUBJECTS).items() if p in before} == before
    manifest = pd.read_parquet(results / "manifest.parquet")
    assert list(manifest["subject_id"]) == [*UPSTREAM_SUBJECTS, "sub-007"]
    for group in FEATURE_GROUPS:
        table = pd.read_parquet(ResultPaths(str(results)).feature_table(group))
        assert list(table["subject_id"]) == list(manifest["subject_id"]), group
        assert table.drop(columns="subject_id").notna().all(axis=None), group
    assert re.search(
        r"pretrain plan: train \(.*subjects changed \(retrain: cohort\)\)", last_plan(results)
    )
    assert list((results / "pretrain" / "default" / "superseded").iterdir())

    # A removed (held-out) subject: the cohort stages run again without it, no per-subject job
    # runs, and the model is exported again, not retrained.
    (wd.subjects / "sub-001").unlink()
    jobs = jobs_of(wd.dry_run())
    assert not set(jobs) & set(PER_SUBJECT)
    assert jobs["manifest"] == 1
    wd.snakemake("--cores", "2", "--omit-from", "probe", "training_report")
    manifest = pd.read_parquet(results / "manifest.parquet")
    assert "sub-001" not in set(manifest["subject_id"])
    for group in FEATURE_GROUPS:
        table = pd.read_parquet(ResultPaths(str(results)).feature_table(group))
        assert "sub-001" not in set(table["subject_id"])
    assert "pretrain plan: export (same training subjects and settings" in last_plan(results)

    # A radiomics parameter: radiomics and what depends on it, nothing else (what those jobs
    # then do is what the removal above did: new tables, the model exported again).
    params = wd.root / "radiomics.yaml"
    params.write_text(params.read_text().replace("binWidth: 5", "binWidth: 6"))
    jobs = jobs_of(wd.dry_run())
    assert jobs["radiomics"] == 6 and jobs["radiomics_table"] == 1 and jobs["pretrain"] == 1
    assert "stats" not in jobs and "cache" not in jobs and "morphometry_tables" not in jobs


def test_a_full_run_leaves_the_subjects_dirs_untouched(trained: Workdir, cohort8: Path):
    """Issue 30, case 6: the session's whole workflow (discovery, stats, radiomics, cache, QC,
    normalisation, manifest, pretraining, training report, probe) read a read-only SUBJECTS_DIR
    (a read-only bind mount where the tests run as root) and changed no byte in it."""
    assert (trained.results / "probe" / "default" / "probe.tsv").is_file()
    recorded = json.loads((cohort8.parent / "checksums.json").read_text())
    assert recorded and file_checksums(cohort8) == recorded
    # Where the cohort could not be mounted read-only (not root), the checksums alone show it.
    if json.loads((cohort8.parent / "read_only.json").read_text())["mounted"]:
        with pytest.raises(OSError, match="Read-only file system"):
            (cohort8 / "sub-001" / "probe").write_text("")


def test_killed_workflow_kills_its_trainers_and_resumes(upstream_copy: Workdir):
    """kill -9 of Snakemake's process group during pretraining (issue 18, case 8): the trainers,
    in sessions of their own, die with it instead of keeping the run lock, and the README's
    recovery (unlock, rerun with --rerun-incomplete) resumes from the last checkpoint."""
    wd, results = upstream_copy, upstream_copy.results
    wd.set(pretrain={**QUICK["pretrain"], "epochs": 3})
    encoder = results / "pretrain" / "default" / "encoder.safetensors"
    checkpoint = results / "pretrain" / "default" / "checkpoints" / "checkpoint_0001.pt"
    proc = subprocess.Popen(
        snakemake_command("--cores", "2", wd.rel(encoder), *wd.args),
        cwd=wd.root, env=subprocess_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not checkpoint.exists():
            assert proc.poll() is None, "snakemake ended before the first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
            time.sleep(0.5)
    finally:
        tree = process_tree(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(tree) > 2, tree  # snakemake, the job's script, torchrun/the trainer
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
    wd.snakemake("--unlock")
    wd.snakemake("--cores", "2", "--rerun-incomplete", str(encoder))
    assert encoder.is_file()
    assert "pretrain plan: resume (interrupted run" in last_plan(results)
    log = (results / "logs" / "pretrain" / "default.log").read_text()
    assert re.search(r"resuming \S+ after epoch [12]\b", log)
    epochs = [
        int(m)
        for m in re.findall(
            r'"epoch": (\d+)', (results / "pretrain" / "default" / "metrics.jsonl").read_text()
        )
    ]
    assert sorted(epochs) == [0, 1, 2]


def test_more_gpus_than_resources_is_explained(tmp_path: Path, demo_cohort: Path):
    override = workflow_config(tmp_path, [{"path": str(demo_cohort)}], pretrain={"gpus": 2})
    proc = run_snakemake("-n", "--resources", "gpu=1", "--configfile", str(override), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "pretrain.gpus is 2 but this job was given gpu=1" in out
    assert "--resources gpu=2" in out
    ok = run_snakemake("-n", "--resources", "gpu=2", "--configfile", str(override))
    assert "pretrain" in jobs_of(ok.stdout)
