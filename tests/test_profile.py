"""The SLURM profile against the current workflow, without a cluster (a dry run).

tests/test_slurm.py runs the profile on a real SLURM; this checks, everywhere and quickly, that
the profile still fits the rules: its expressions evaluate, and every per-subject rule (a rule
with a ``shard`` wildcard, including rules added later) is bundled into group jobs.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from damt.discovery.record import read_shard
from damt.paths import ResultPaths
from tests.conftest import REPO, run_snakemake, workflow_config

PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())


def profile_resource(rule: str, name: str, members: Path, threads: int = 1) -> int:
    """A shard job's resource as the profile defines it, evaluated the way Snakemake does."""
    value = PROFILE["set-resources"][rule][name]
    if isinstance(value, int):
        return value
    namespace = {"input": SimpleNamespace(members=str(members)), "attempt": 1, "threads": threads}
    return eval(value, namespace)


def job_resources(job: dict) -> dict[str, str]:
    """The resources a dry run printed for a job."""
    return dict(kv.split("=", 1) for kv in job["resources"].split(", "))


def profile_dry_run(config: Path) -> tuple[list[dict], str]:
    """(jobs, output) of a dry run through the profile: one dict per printed job."""
    profile = str(REPO / "profiles" / "slurm")
    out = run_snakemake("-n", "--profile", profile, "--configfile", str(config)).stdout
    jobs = []
    for block in re.split(r"\n\s*\[[^\]]+\]\n", out):
        rule = re.match(r"\s*(?:local)?rule (\w+):", block)
        if rule:
            fields = dict(re.findall(r"^\s+(\w+): (.*)$", block, re.MULTILINE))
            jobs.append({"rule": rule.group(1), **fields})
    # A parser that stopped matching Snakemake's output must fail here, not pass vacuously.
    rules = {j["rule"] for j in jobs}
    assert {"stats", "radiomics", "cache", "manifest", "pretrain"} <= rules, (rules, out[-2000:])
    assert all("resources" in j for j in jobs), jobs
    return jobs, out


@pytest.fixture(scope="module")
def dry_run(demo_cohort, tmp_path_factory):
    """(jobs, output, results folder) of a dry run of the demo cohort through the profile."""
    tmp = tmp_path_factory.mktemp("profile")
    config = workflow_config(tmp, [{"path": str(demo_cohort)}], sharding={"n_shards": 3})
    return (*profile_dry_run(config), tmp / "results")


def test_every_per_subject_rule_is_grouped(dry_run):
    jobs, out, _ = dry_run
    per_subject = {j["rule"] for j in jobs if j.get("wildcards", "").startswith("shard=")}
    assert per_subject >= {"radiomics", "cache"}
    for rule in per_subject:
        group = PROFILE["groups"].get(rule)
        assert group, f"per-subject rule {rule} is not grouped in profiles/slurm"
        assert PROFILE["group-components"][group] > 1
        assert f"Group job {group} " in out
        # Sized as members that run one after another (see the profile's group_slots).
        assert all(job_resources(j)["group_slots"] == "1" for j in jobs if j["rule"] == rule)


def test_runtime_grows_with_the_shard(dry_run):
    jobs, _, results = dry_run
    for rule in ("radiomics", "cache"):
        runtime_by_size = {}
        for job in (j for j in jobs if j["rule"] == rule):
            members = Path(ResultPaths(str(results)).shard_members(job["wildcards"][6:]))
            runtime = int(job_resources(job)["runtime"])
            assert runtime == profile_resource(rule, "runtime", members)
            runtime_by_size[len(read_shard(members))] = runtime
        sizes = sorted(runtime_by_size)
        assert len(sizes) > 1, f"all shards hold {sizes} subjects"
        assert runtime_by_size[sizes[0]] < runtime_by_size[sizes[-1]]


def test_every_rule_has_time_and_memory(dry_run):
    jobs, _, _ = dry_run
    for job in jobs:
        resources = job_resources(job)
        assert int(resources["runtime"]) > 0 and int(resources["mem_mb"]) > 0, job


class _Resources(dict):
    """A job's resources as the executor plugin reads them (``get`` and attributes)."""

    __getattr__ = dict.__getitem__


def test_several_nodes_ask_for_nodes_one_task_each_and_gpus_per_node(demo_cohort, tmp_path):
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    config = workflow_config(
        tmp_path, [{"path": str(demo_cohort)}], pretrain={"nodes": 2, "gpus": 2, "threads": 4}
    )
    jobs, out = profile_dry_run(config)
    (job,) = [j for j in jobs if j["rule"] == "pretrain"]
    resources = _Resources({k: int(v) if v.isdigit() else v for k, v in job_resources(job).items()})
    assert {k: resources.get(k) for k in ("nodes", "tasks", "mpi", "gres")} == {
        "nodes": 2,
        "tasks": 2,
        "mpi": "srun",
        "gres": "gpu:2",
    }, out
    assert "gpu" not in resources  # it would become --gpus, GPUs per job rather than per node
    # The sbatch call the plugin builds for this job (its own functions, as its run_job calls
    # them), with the job's threads as the profile sets them.
    params = {
        "run_uuid": "RUN",
        "slurm_logfile": "log",
        "comment_str": "rule_pretrain",
        "account": "",
        "partition": "",
        "workdir": str(tmp_path),
    }
    threads = PROFILE["set-threads"]["pretrain"]
    plugin_job = SimpleNamespace(resources=resources, threads=threads)
    sbatch = (get_submit_command(plugin_job, params) + set_gres_string(plugin_job)).split()
    for option in ("--nodes=2", "--ntasks=2", f"--cpus-per-task={threads}", "--gres=gpu:2"):
        assert option in sbatch, sbatch
    assert ["--mem", str(PROFILE["set-resources"]["pretrain"]["mem_mb"])] in [
        sbatch[i : i + 2] for i in range(len(sbatch))
    ]
    # No per-job GPU count, no task per GPU (the plugin's default for GPU jobs with tasks).
    assert not [o for o in sbatch if o.startswith(("--gpus", "--ntasks-per-gpu"))], sbatch
