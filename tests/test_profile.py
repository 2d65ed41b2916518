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

from damt.discovery import read_shard
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


@pytest.fixture(scope="module")
def dry_run(demo_cohort, tmp_path_factory):
    """(jobs, output) of a dry run through the profile: one dict per printed job."""
    tmp = tmp_path_factory.mktemp("profile")
    config = workflow_config(tmp, [{"path": str(demo_cohort)}], sharding={"n_shards": 3})
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
    return jobs, out, tmp / "results"


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
