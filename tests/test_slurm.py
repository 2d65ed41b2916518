"""The cluster profile (profiles/slurm) against a real SLURM started by the test.

The real Snakefile runs on the demo cohort through ``--profile profiles/slurm`` and
snakemake-executor-plugin-slurm on a single-node SLURM 22.05 cluster (tests/slurm_cluster.py).
SLURM's own records (slurmctld's job table, the batch scripts it ran, the job completion log, the
job logs) are then compared with what Snakemake reports and with the profile.

Only executor settings that the profile leaves alone are added on the command line (keeping the
logs of successful jobs, a short first status check) so the profile itself is used as written.
The main run sends the per-subject stages through SLURM (as group jobs); the cohort rules up to
the manifest then run locally, because each stage through SLURM costs a round of the plugin's
status checks (10-30 s). Cohort rules go through SLURM in the other runs: the GPU check, a
second, forced run of one of them (giving a rule a GPU from the command line takes
``--set-resources``, which replaces the profile's whole ``set-resources`` section, so it stays
out of the main run), and the pretrain job. The cluster has two nodes (two slurmd on this
machine), so a third run trains the model with ``pretrain.nodes: 2``: one SLURM job over both
nodes, and a fourth is signalled, requeued and resumes.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from damt.discovery.record import read_shard
from damt.paths import ResultPaths
from tests.conftest import (
    BIN,
    QUICK,
    REPO,
    snakemake_command,
    subprocess_env,
    workflow_config,
    write_radiomics_params,
)
from tests.slurm_cluster import SlurmCluster, running_cluster, unavailable_reason
from tests.test_profile import PROFILE, profile_resource

# Per-subject rules: one job per shard, bundled into group jobs by the profile.
SHARD_RULES = ("radiomics", "cache")
# The main run's jobs: the per-subject stages.
SLURM_RULES = ("stats", *SHARD_RULES)
# 4 demo subjects in 2 crc32 shards: shards of 3 subjects and 1, one group job per stage.
N_SHARDS = 2
# The GPU check: a rule whose job asks for `gpu: GPU_COUNT`. Until the pretrain rule exists the
# table rule is given the resource on the command line; for pretrain, set GPU_RULE = "pretrain",
# GPU_TARGET to its output, GPU_ARGS = () and its gpu count in the config to at most 2 (the
# test node's GPUs).
GPU_RULE = "radiomics_table"
GPU_TARGET = "features/radiomics.parquet"
GPU_COUNT = 2
GPU_ARGS = ("--set-resources", f"{GPU_RULE}:gpu={GPU_COUNT}")
# A Snakemake run through the profile (the demo workflow took 9 min on a loaded 2-core machine).
RUN_TIMEOUT_S = 900

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def cluster():
    """A running single-node SLURM cluster (skips where the machine cannot run one)."""
    reason = unavailable_reason()
    if reason:
        # CI installs SLURM (.ci/run) and sets DAMT_REQUIRE_SLURM=1: there, a skip would hide
        # a broken set-up, so it fails instead.
        if os.environ.get("DAMT_REQUIRE_SLURM") == "1":
            pytest.fail(f"DAMT_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    with running_cluster(nodes=2) as running:
        yield running


def profile_command(
    cluster: SlurmCluster, workdir: Path, *args: str
) -> tuple[list[str], dict[str, str]]:
    """The Snakemake command running the repository's Snakefile through the profile in
    ``workdir``, and its environment.

    ``workdir`` links to the repository's config/ (the config's relative paths) and keeps
    Snakemake's state (.snakemake/: locks, metadata, SLURM logs) out of the repository, so a
    run killed on timeout leaves no stale lock there.
    """
    if not (workdir / "config").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config").symlink_to(REPO / "config")
    # Jobs start Snakemake again inside SLURM with this environment (sbatch --export=ALL): the
    # virtual environment's bin first, and this checkout's `damt` ahead of an installed one.
    env = subprocess_env(**cluster.env())
    env.pop("SNAKEMAKE_PROFILE", None)
    cmd = snakemake_command(
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--slurm-keep-successful-logs",
        # The plugin waits this long before its first status check and 10 s longer after each
        # check that finds nothing finished: the least it takes keeps each stage's wait short.
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--verbose",
        *args,
    )
    return cmd, env


def run_with_profile(cluster: SlurmCluster, workdir: Path, *args: str) -> str:
    """Run :func:`profile_command` to its end; its combined output."""
    cmd, env = profile_command(cluster, workdir, *args)
    try:
        proc = subprocess.run(
            cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(
            errors="replace"
        )
        pytest.fail(f"snakemake ran over {RUN_TIMEOUT_S} s:\n{out[-6000:]}\n{cluster.logs()}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake failed:\n{output[-8000:]}\n{cluster.logs()}"
    return output


def run_id(log: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", log).group(1)


def submitted_ids(log: str) -> set[str]:
    return set(re.findall(r"has been submitted with SLURM jobid (\d+)", log))


def target_jobs(script: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of each Snakemake job a SLURM batch script runs."""
    targets = re.search(r"--target-jobs ((?:'[^']*' ?)+)", script).group(1)
    return [tuple(t.split(":", 1)) for t in re.findall(r"'([^']*)'", targets)]


def jobstep_environment(job_log: Path) -> dict[str, str]:
    """The environment the Snakemake process inside a SLURM job saw (the jobstep executor
    prints it with --verbose)."""
    match = re.search(r"^environment: environ\((\{.*\})\)$", job_log.read_text(), re.MULTILINE)
    assert match, f"no environment dump in {job_log}"
    return ast.literal_eval(match.group(1))


def minutes(slurm_time: str) -> int:
    """SLURM's [D-]HH:MM:SS time limit in minutes (limits are whole minutes)."""
    days, _, hms = slurm_time.rpartition("-")
    hours, mins, _ = (int(x) for x in hms.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + mins


@pytest.fixture(scope="module")
def slurm_run(cluster, demo_cohort, tmp_path_factory):
    """The whole workflow run through the profile, and SLURM's records of its jobs."""
    tmp = tmp_path_factory.mktemp("slurm-run")
    config = workflow_config(
        tmp,
        [{"path": str(demo_cohort)}],
        sharding={"n_shards": N_SHARDS},
        # One ROI at 2 mm keeps PyRadiomics quick; the test is about scheduling, not features.
        radiomics={
            "rois": {"whole_brain": ["nonzero"]},
            "params": str(write_radiomics_params(tmp / "radiomics.yaml")),
        },
        cache=QUICK["cache"],
        # One epoch: the pretrain runs below are about scheduling and signals, not training.
        pretrain={"epochs": 1, "warmup_epochs": 0},
    )
    # Through SLURM: the per-subject stages.
    target = str(tmp / "results" / "manifest.parquet")
    log = run_with_profile(
        cluster, tmp / "work", "--configfile", str(config),
        "--until", *SLURM_RULES, "--", target,
    )  # fmt: skip
    jobs = {k: v for k, v in cluster.jobs().items() if v["JobName"] == run_id(log)}
    # The rest up to the manifest, locally (in the same Snakemake state): the pretrain tests
    # below run the pretrain job through SLURM on it.
    local = subprocess.run(
        snakemake_command("--cores", "2", "--configfile", str(config), "--", target),
        cwd=tmp / "work", env=subprocess_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr[-6000:]
    return SimpleNamespace(
        out=tmp / "results",
        log=log,
        jobs=jobs,
        scripts={job_id: cluster.batch_script(job_id) for job_id in jobs},
        completed=cluster.completed_jobs(),
        shards={p.stem: p for p in (tmp / "results" / "discovery" / "shards").glob("*.tsv")},
        subjects=sorted(p.name for p in demo_cohort.iterdir() if p.is_dir()),
    )


def test_every_job_went_through_sbatch(slurm_run):
    ids = submitted_ids(slurm_run.log)
    assert ids, "Snakemake submitted nothing"
    assert ids == set(slurm_run.jobs), "Snakemake's job ids and slurmctld's jobs differ"
    for job_id, job in slurm_run.jobs.items():
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
        assert slurm_run.completed[job_id]["JobState"] == "COMPLETED"
    # Every job of the run ran inside a SLURM job, exactly once.
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", slurm_run.log)
    in_slurm = [rule for s in slurm_run.scripts.values() for rule, _ in target_jobs(s)]
    assert sorted(in_slurm) == sorted(finished)
    assert set(in_slurm) == set(SLURM_RULES)


def test_status_is_polled_with_squeue(slurm_run):
    # This cluster has no accounting: with sacct the run would never have finished.
    assert "command=squeue" in slurm_run.log
    assert "command=sacct" not in slurm_run.log


def test_shard_jobs_are_bundled_into_group_jobs(slurm_run):
    assert len(slurm_run.shards) >= 2, f"the cohort fell into one shard: {slurm_run.shards}"
    for rule in SHARD_RULES:
        per_job = {
            job_id: [wc.removeprefix("shard=") for r, wc in target_jobs(s) if r == rule]
            for job_id, s in slurm_run.scripts.items()
        }
        per_job = {job_id: shards for job_id, shards in per_job.items() if shards}
        assert sorted(s for shards in per_job.values() for s in shards) == sorted(slurm_run.shards)
        assert len(per_job) < len(slurm_run.shards), f"{rule}: one SLURM job per shard"
        for job_id, shards in per_job.items():
            job = slurm_run.jobs[job_id]
            assert job["Comment"].startswith(f"rule_{PROFILE['groups'][rule]}")
            # The group runs its members one after another: it asks for the sum of their
            # runtimes and the largest member's memory and CPUs (the profile's group_slots).
            members = [slurm_run.shards[s] for s in shards]
            runtime = sum(profile_resource(rule, "runtime", m) for m in members)
            mem = max(profile_resource(rule, "mem_mb", m) for m in members)
            assert minutes(job["TimeLimit"]) == runtime, (rule, job["TimeLimit"], runtime)
            assert job["MinMemoryNode"] == f"{mem}M"
            assert job["NumCPUs"] == "1"


def test_jobs_inherit_the_environment(slurm_run):
    calls = re.findall(r"^sbatch call: (.*)$", slurm_run.log, re.MULTILINE)
    assert calls and all("--export=ALL" in call for call in calls)
    for job_id, script in slurm_run.scripts.items():
        python = rf"^{re.escape(str(BIN))}/python[\d.]* -m snakemake "
        assert re.search(python, script, re.MULTILINE), f"job {job_id}: not this environment"
        env = jobstep_environment(Path(slurm_run.jobs[job_id]["StdOut"]))
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
        assert env["PATH"].split(os.pathsep)[0] == str(BIN)


def test_outputs(slurm_run):
    table = pd.read_parquet(ResultPaths(str(slurm_run.out)).feature_table("radiomics"))
    assert table["subject_id"].tolist() == slurm_run.subjects
    features = table.drop(columns="subject_id")
    assert features.shape[1] > 0 and features.notna().all(axis=None)
    for shard in slurm_run.shards:
        for rule in SHARD_RULES:
            summary = pd.read_csv(slurm_run.out / rule / "shards" / f"{shard}.tsv", sep="\t")
            members = {row["subject_id"] for row in read_shard(slurm_run.shards[shard])}
            assert set(summary["subject_id"]) == members
            assert (summary["status"] == "ok").all(), summary
    for subject in slurm_run.subjects:
        assert (slurm_run.out / "subjects" / subject / "cache" / "image.npy").is_file()


def test_gpu_resource_becomes_gres(cluster, slurm_run):
    log = run_with_profile(
        cluster,
        slurm_run.out.parent / "work",
        "--configfile",
        str(slurm_run.out.parent / "config.override.yaml"),
        "--forcerun",
        GPU_RULE,
        *GPU_ARGS,
        "--",
        str(slurm_run.out / GPU_TARGET),
    )
    (job_id,) = submitted_ids(log)
    assert re.search(rf"^sbatch call: .* --gpus={GPU_COUNT}( |$)", log, re.MULTILINE)
    job = cluster.jobs()[job_id]
    assert job["TresPerJob"] == f"gres:gpu:{GPU_COUNT}"
    assert job["JobState"] == "COMPLETED"
    assert [rule for rule, _ in target_jobs(cluster.batch_script(job_id))] == [GPU_RULE]
    # Inside the job SLURM handed out the fake devices, and the jobstep's srun asked for them.
    env = jobstep_environment(Path(job["StdOut"]))
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(str(i) for i in range(GPU_COUNT))
    assert f"--gpus={GPU_COUNT}" in Path(job["StdOut"]).read_text()
    # Jobs that ask for no GPU get none.
    assert all("TresPerJob" not in j for j in slurm_run.jobs.values())


def test_pretrain_spans_two_nodes(cluster, slurm_run):
    """``pretrain.nodes: 2`` through the profile: one SLURM job on both nodes, whose batch step
    starts a torchrun per node with srun."""
    base = slurm_run.out.parent
    config = yaml.safe_load((base / "config.override.yaml").read_text())
    config["pretrain"] |= {"nodes": 2, "cpu_processes": 1}
    override = base / "config.nodes.yaml"
    override.write_text(yaml.safe_dump(config))
    run_dir = slurm_run.out / "pretrain" / "default"
    log = run_with_profile(
        cluster,
        base / "work",
        "--configfile",
        str(override),
        # One thread per trainer: both "nodes" share this machine's cores.
        "--set-threads",
        "pretrain=1",
        "--",
        str(run_dir / "encoder.safetensors"),
    )
    (job_id,) = submitted_ids(log)
    assert re.search(r"^sbatch call: .* --nodes=2 --ntasks=2 ", log, re.MULTILINE), log[-4000:]
    job = cluster.jobs()[job_id]
    assert (job["JobState"], job["NumNodes"], job["NumTasks"]) == ("COMPLETED", "2", "2"), job
    assert job["NodeList"] == cluster.node_list
    rule_log = (slurm_run.out / "logs" / "pretrain" / "default.log").read_text()
    assert re.search(r"running: srun --nodes=2 --ntasks=2 --ntasks-per-node=1 ", rule_log)
    assert "--rdzv-endpoint=127.0.0.1:" in rule_log  # the first node's NodeAddr
    # srun --label: the trainers' lines carry their node's task number.
    assert re.search(r"^[01]: .*training \d+ subjects on 2 cpu process", rule_log, re.MULTILINE)
    card = json.loads((run_dir / "model_card.json").read_text())["pretraining"]
    assert (card["world_size"], card["nodes"]) == (2, 2)


def test_a_signalled_pretrain_job_checkpoints_requeues_itself_and_resumes(cluster, slurm_run):
    """Issue 30, case 1: SIGTERM to the pretrain job's processes (what SLURM sends on preemption
    and, with the profile's ``--signal=TERM@600``, before the time limit; sent here with
    ``scancel --signal``): the two trainers stop at the same step with a checkpoint, the job
    requeues itself, and the same SLURM job runs again and resumes to the end."""
    base = slurm_run.out.parent
    config = yaml.safe_load((base / "config.override.yaml").read_text())
    # Two trainers (their stop decision is all-reduced), three epochs: the signal lands while
    # the run is under way.
    config["pretrain"] |= {
        "run_name": "requeued", "epochs": 3, "batch_size_per_gpu": 1, "cpu_processes": 2,
    }  # fmt: skip
    override = base / "config.requeue.yaml"
    override.write_text(yaml.safe_dump(config))
    run_dir = slurm_run.out / "pretrain" / "requeued"
    cmd, env = profile_command(
        cluster, base / "work", "--configfile", str(override), "--set-threads", "pretrain=2",
        "--", str(run_dir / "encoder.safetensors"),
    )  # fmt: skip
    output = base / "requeue.out"
    with open(output, "w") as out:
        proc = subprocess.Popen(cmd, cwd=base / "work", env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (run_dir / "checkpoints" / "checkpoint.pt").exists():
            assert proc.poll() is None, output.read_text()[-6000:]
            assert time.monotonic() < deadline, output.read_text()[-6000:]
            time.sleep(0.2)
        (job_id,) = submitted_ids(output.read_text())
        cluster.run("scancel", "--signal=TERM", job_id)
        # SLURM holds a requeued job for two minutes; release it at once.
        while cluster.jobs()[job_id]["JobState"] != "PENDING":
            assert proc.poll() is None, output.read_text()[-6000:]
            time.sleep(0.5)
        cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = output.read_text()
    assert proc.returncode == 0, f"{log[-8000:]}\n{cluster.logs()}"
    assert submitted_ids(log) == {job_id}, "requeued, not submitted again"
    assert re.search(r"^sbatch call: .* --requeue --signal=TERM@600", log, re.MULTILINE)
    job = cluster.jobs()[job_id]
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), job
    # The requeued job's rule log starts anew (Snakemake's), and so does SLURM's job log; the
    # run folder keeps the stop.
    (stop,) = [json.loads(line) for line in (run_dir / "stops.jsonl").read_text().splitlines()]
    assert (stop["signal"], stop["slurm_job"]) == ("SIGTERM", job_id), stop
    rule_log = (slurm_run.out / "logs" / "pretrain" / "requeued.log").read_text()
    assert "the run was stopped 1 time(s) by a signal" in rule_log, rule_log[-6000:]
    resumed = f"in epoch {stop['epoch'] + 1} after step {stop['steps']} of {stop['iters']}"
    if not stop["steps"]:  # stopped at an epoch's end
        resumed = f"after epoch {stop['epoch']}"
    assert re.search(rf"resuming \S+ {resumed}", rule_log), rule_log[-6000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    card = json.loads((run_dir / "model_card.json").read_text())["pretraining"]
    assert card["world_size"] == 2
    assert not (run_dir / "stopped.json").exists()
