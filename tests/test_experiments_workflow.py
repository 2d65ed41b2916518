"""Experiment plans through real Snakemake runs: the planned jobs, parse-time refusals, and a real
two-run experiment end to end with its incremental reruns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from damt.demo.cohort import generate_cohort
from damt.model.spec import TASKS
from tests.conftest import jobs_of, run_snakemake, workflow_config
from tests.test_workflow import QUICK

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo16(tmp_path_factory) -> Path:
    """The demo cohort of config/config.yaml (16 subjects, seed 0; 4 held out)."""
    out = tmp_path_factory.mktemp("demo16") / "subjects"
    generate_cohort(out, 16, seed=0)
    return out


def demo_override(tmp_path: Path, cohort: Path, experiments: dict, **sections) -> Path:
    """A config override on the demo cohort (no shared subjects) with ``experiments``."""
    return workflow_config(
        tmp_path,
        [{"path": str(cohort)}],
        probe={"phenotypes": str(cohort / "phenotypes.tsv")},
        experiments=experiments,
        **sections,
    )


def planned(stdout: str, rule: str) -> dict[str, str]:
    """Run wildcard → the job's block of a dry run, for every planned job of ``rule``."""
    jobs = {}
    for m in re.finditer(rf"^(?:local)?rule {rule}:\n((?:[ \t]+.*\n)+)", stdout, re.M):
        run = re.search(r"wildcards: run=(\S+)", m.group(1))
        jobs[run.group(1) if run else ""] = m.group(1)
    return jobs


def test_leave_one_task_out_plans_eight_runs_and_one_summary(tmp_path, demo16):
    experiments = {"ablation": "leave_one_task_out", "seeds": [0]}
    out = run_snakemake("-n", "--configfile", str(demo_override(tmp_path, demo16, experiments)))
    jobs = jobs_of(out.stdout)
    assert (jobs["pretrain"], jobs["probe"], jobs["experiments_summary"]) == (8, 8, 1)
    runs = planned(out.stdout, "pretrain")
    assert set(runs) == {"full-s0", *(f"ablate-{t}-s0" for t in TASKS)}
    folders = {re.search(r"output: (\S+)/encoder", block).group(1) for block in runs.values()}
    assert len(folders) == 8
    summary = planned(out.stdout, "experiments_summary")[""]
    assert "ablation.png" in summary and "training_cost.png" in summary
    assert "data_scaling.png" not in summary and "model_scaling.png" not in summary
    assert re.search(r"output: \S+/probe/ablate-mim-s0/probe.json", out.stdout)


def test_data_scaling_adds_a_run_per_size_and_seed(tmp_path, demo16):
    experiments = {"ablation": "leave_one_task_out", "data_scaling": [4, 8], "seeds": [0, 1]}
    out = run_snakemake("-n", "--configfile", str(demo_override(tmp_path, demo16, experiments)))
    runs = planned(out.stdout, "pretrain")
    assert len(runs) == 8 * 2 + 4
    assert {r for r in runs if r.startswith("data-")} == {
        "data-4-s0", "data-4-s1", "data-8-s0", "data-8-s1",
    }  # fmt: skip
    assert "data_scaling.png" in planned(out.stdout, "experiments_summary")[""]


def test_runs_ask_for_their_own_gpus(tmp_path, demo16):
    """Each run's job asks for its run's `gpus`: runs compete for --resources gpu=N."""
    experiments = {"runs": {"two": {}, "four": {"gpus": 4}}}
    override = demo_override(tmp_path, demo16, experiments, pretrain={"gpus": 2})
    out = run_snakemake("-n", "--resources", "gpu=4", "--configfile", str(override))
    runs = planned(out.stdout, "pretrain")
    assert re.search(r"resources: .*\bgpu=2\b", runs["two-s0"])
    assert re.search(r"resources: .*\bgpu=4\b", runs["four-s0"])


@pytest.mark.parametrize(
    ("experiments", "words"),
    [
        ({"runs": {"fast": {"epoch": 1}}}, ["'fast'", "unknown pretrain key 'epoch'"]),
        ({"runs": {"x": {"tasks": {"jigsaw": False}}}}, ["'x'", "unknown task 'jigsaw'"]),
        ({"data_scaling": [13]}, ["'data-13-s0'", "13 but only 12"]),
        ({"runs": {"cold": {"warmup_epochs": 9}}}, ["'cold-s0'", "warmup"]),
    ],
)
def test_a_bad_plan_stops_before_any_job(tmp_path, demo16, experiments, words):
    override = demo_override(tmp_path, demo16, experiments)
    proc = run_snakemake("-n", "--configfile", str(override), check=False)
    assert proc.returncode != 0
    for word in words:
        assert word in proc.stdout + proc.stderr, proc.stderr[-3000:]


def test_experiments_need_a_phenotype_table(tmp_path, demo16):
    override = workflow_config(tmp_path, [{"path": str(demo16)}], experiments={"ablation": ["mim"]})
    proc = run_snakemake("-n", "--configfile", str(override), check=False)
    assert proc.returncode != 0 and "probe.phenotypes" in proc.stdout + proc.stderr


def test_a_two_run_experiment_end_to_end(tmp_path):
    """full + the mim ablation (tiny preset, one epoch) on eight generated subjects, then the
    plan changes: an added run trains alone, a changed run retrains alone, a removed run only
    leaves the summary."""
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, 8, seed=5)
    quick = {**QUICK, "pretrain": {**QUICK["pretrain"], "epochs": 1, "warmup_epochs": 0}}
    quick["probe"] = {**QUICK["probe"], "phenotypes": str(cohort / "phenotypes.tsv")}

    def override(experiments: dict) -> tuple[str, str]:
        path = workflow_config(tmp_path, [{"path": str(cohort)}], **quick, experiments=experiments)
        return "--configfile", str(path)

    args = override({"ablation": ["mim"], "seeds": [0]})
    run_snakemake("--cores", "2", *args)
    results = tmp_path / "results"
    summary = pd.read_csv(results / "experiments" / "summary.tsv", sep="\t")
    assert set(summary["run"]) == {"full-s0", "ablate-mim-s0"}
    assert set(summary["kind"]) == {"full", "ablation"}
    full = summary[summary["run"] == "full-s0"]
    assert (full["delta_to_full"] == 0).all()
    ablated = summary[summary["run"] == "ablate-mim-s0"].set_index(
        ["target", "features", "method", "metric"]
    )
    reference = full.set_index(["target", "features", "method", "metric"])["mean"]
    delta = ablated["mean"] - reference.reindex(ablated.index)
    assert ablated["delta_to_full"].to_numpy() == pytest.approx(delta.to_numpy(), nan_ok=True)
    runs = pd.read_csv(results / "experiments" / "runs.tsv", sep="\t").set_index("run")
    assert (runs["train_seconds"] > 0).all() and (runs["encoder_parameters"] > 0).all()
    for figure in ("ablation.png", "training_cost.png"):
        assert (results / "experiments" / figure).stat().st_size > 1000
    card = json.loads((results / "pretrain" / "ablate-mim-s0" / "model_card.json").read_text())
    assert "mim" not in card["pretraining"]["tasks"]
    assert "Nothing to be done" in run_snakemake("-n", *args).stdout

    # An added run: only its jobs and the summary.
    added = run_snakemake("-n", *override({"ablation": ["mim"], "data_scaling": [3]})).stdout
    assert set(planned(added, "pretrain")) == {"data-3-s0"}
    assert jobs_of(added)["experiments_summary"] == 1 and jobs_of(added)["probe"] == 1

    # One run's overrides changed: that run retrains, the other is kept.
    changed = {"runs": {"full": {}, "ablate-mim": {"tasks": {"mim": False}, "base_lr": 0.1}}}
    dry = run_snakemake("-n", *override(changed)).stdout
    assert set(planned(dry, "pretrain")) == {"ablate-mim-s0"}
    run_snakemake("--cores", "2", *override(changed))
    log = (results / "logs" / "pretrain" / "ablate-mim-s0.log").read_text()
    assert re.search(r"pretrain plan: train \(pretrain changed", log), log[-2000:]

    # A removed run: the summary drops it; its folder stays.
    removed = override({"runs": {"full": {}}})
    dry = run_snakemake("-n", *removed).stdout
    assert jobs_of(dry) == {"experiments_summary": 1, "all": 1}
    run_snakemake("--cores", "2", *removed)
    summary = pd.read_csv(results / "experiments" / "summary.tsv", sep="\t")
    assert set(summary["run"]) == {"full-s0"}
    assert (results / "pretrain" / "ablate-mim-s0" / "encoder.safetensors").is_file()
