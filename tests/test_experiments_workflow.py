"""Experiment plans through real Snakemake runs on the session's upstream build: the planned
jobs, and a real two-run experiment end to end with its incremental reruns. The plan's refusals
are unit tests (tests/test_experiments.py); that the workflow makes them at parse time is
tests/test_config.py::test_the_workflow_refuses_bad_settings_at_parse_time."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from damt.model.spec import TASKS
from tests.conftest import QUICK, Workdir, jobs_of

pytestmark = pytest.mark.slow


def planned(stdout: str, rule: str) -> dict[str, str]:
    """Run wildcard → the job's block of a dry run, for every planned job of ``rule``."""
    jobs = {}
    for m in re.finditer(rf"^(?:local)?rule {rule}:\n((?:[ \t]+.*\n)+)", stdout, re.M):
        run = re.search(r"wildcards: run=(\S+)", m.group(1))
        jobs[run.group(1) if run else ""] = m.group(1)
    return jobs


def test_leave_one_task_out_plans_eight_runs_and_one_summary(upstream_copy: Workdir):
    out = upstream_copy.set(experiments={"ablation": "leave_one_task_out", "seeds": [0]}).dry_run()
    jobs = jobs_of(out)
    assert (jobs["pretrain"], jobs["probe"], jobs["experiments_summary"]) == (8, 8, 1)
    runs = planned(out, "pretrain")
    assert set(runs) == {"full-s0", *(f"ablate-{t}-s0" for t in TASKS)}
    folders = {re.search(r"output: (\S+)/encoder", block).group(1) for block in runs.values()}
    assert len(folders) == 8
    summary = planned(out, "experiments_summary")[""]
    assert "ablation.png" in summary and "training_cost.png" in summary
    assert "data_scaling.png" not in summary and "model_scaling.png" not in summary
    assert re.search(r"output: \S+/probe/ablate-mim-s0/probe.json", out)


def test_data_scaling_adds_a_run_per_size_and_seed(upstream_copy: Workdir):
    experiments = {"ablation": "leave_one_task_out", "data_scaling": [2, 4], "seeds": [0, 1]}
    out = upstream_copy.set(experiments=experiments).dry_run()
    runs = planned(out, "pretrain")
    assert len(runs) == 8 * 2 + 4
    assert {r for r in runs if r.startswith("data-")} == {
        "data-2-s0", "data-2-s1", "data-4-s0", "data-4-s1",
    }  # fmt: skip
    assert "data_scaling.png" in planned(out, "experiments_summary")[""]


def test_runs_ask_for_their_own_gpus(upstream_copy: Workdir):
    """Each run's job asks for its run's `gpus`: runs compete for --resources gpu=N."""
    upstream_copy.set(
        experiments={"runs": {"two": {}, "four": {"gpus": 4}}},
        pretrain={**QUICK["pretrain"], "gpus": 2},
    )
    runs = planned(upstream_copy.dry_run("--resources", "gpu=4"), "pretrain")
    assert re.search(r"resources: .*\bgpu=2\b", runs["two-s0"])
    assert re.search(r"resources: .*\bgpu=4\b", runs["four-s0"])


def test_a_two_run_experiment_end_to_end(upstream_copy: Workdir):
    """full + the mim ablation (tiny preset, one epoch) on the six upstream subjects, then the
    plan changes: an added run and a changed run are the only ones planned, a removed run only
    leaves the summary."""
    wd, results = upstream_copy, upstream_copy.results
    wd.set(pretrain={**QUICK["pretrain"], "epochs": 1, "warmup_epochs": 0})

    def plan(experiments: dict) -> Workdir:
        return wd.set(experiments=experiments)

    plan({"ablation": ["mim"], "seeds": [0]}).snakemake("--cores", "2")
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
    assert ablated["mean"].notna().all() and len(ablated) == len(full)
    assert ablated["delta_to_full"].to_numpy() == pytest.approx(delta.to_numpy())
    runs = pd.read_csv(results / "experiments" / "runs.tsv", sep="\t").set_index("run")
    assert (runs["train_seconds"] > 0).all() and (runs["encoder_parameters"] > 0).all()
    for figure in ("ablation.png", "training_cost.png"):
        assert (results / "experiments" / figure).stat().st_size > 1000
    card = json.loads((results / "pretrain" / "ablate-mim-s0" / "model_card.json").read_text())
    assert "mim" not in card["pretraining"]["tasks"]
    assert "Nothing to be done" in wd.dry_run()

    # An added run: only its jobs and the summary.
    added = plan({"ablation": ["mim"], "data_scaling": [3]}).dry_run()
    assert set(planned(added, "pretrain")) == {"data-3-s0"}
    assert jobs_of(added)["experiments_summary"] == 1 and jobs_of(added)["probe"] == 1

    # One run's overrides changed: only that run's job runs again (the trainer then retrains
    # it: a changed pretrain signature, test_launch.py::test_plan).
    changed = {"runs": {"full": {}, "ablate-mim": {"tasks": {"mim": False}, "base_lr": 0.1}}}
    dry = plan(changed).dry_run()
    assert set(planned(dry, "pretrain")) == {"ablate-mim-s0"}

    # A removed run: the summary drops it; its folder stays.
    dry = plan({"runs": {"full": {}}}).dry_run()
    assert jobs_of(dry) == {"experiments_summary": 1, "all": 1}
    wd.snakemake("--cores", "2")
    summary = pd.read_csv(results / "experiments" / "summary.tsv", sep="\t")
    assert set(summary["run"]) == {"full-s0"}
    assert (results / "pretrain" / "ablate-mim-s0" / "encoder.safetensors").is_file()
