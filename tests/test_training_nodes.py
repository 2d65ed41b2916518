"""Pretraining across nodes without a cluster: two "nodes" on this machine.

Each "node" is a launcher process running the command the pretrain job runs on every node of a
SLURM allocation (:func:`damt.training.launch.commands.torchrun_command` with a c10d
rendezvous, here on 127.0.0.1), one trainer process each, gloo. The test process hosts the
rendezvous store, as the job's launcher does
(:func:`damt.training.launch.commands.host_rendezvous_store`). The SLURM side (the plugin's
request for several nodes, srun in the job) is checked in tests/test_profile.py (the
sbatch call for ``nodes: 2``) and tests/test_slurm.py (a real job over two slurmd on this
machine).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed import TCPStore

from damt.training.launch.commands import Rendezvous, host_rendezvous_store, torchrun_command
from damt.training.launch.resources import granted_gpus, pretrain_resources
from damt.training.metrics import read_records
from damt.training.process import lock_holder
from tests.conftest import REPO, run_snakemake, subprocess_env, workflow_config
from tests.training_data import run_settings, train_args, write_config, write_training_set

TIMEOUT_S = 60  # pretrain.collective_timeout_s of these runs


def _start_nodes(cmd: list[str], logs: Path, name: str) -> list[subprocess.Popen]:
    """Two launchers ("nodes") running ``cmd``, each in a process group of its own."""
    procs = []
    for node in (0, 1):
        out = open(logs / f"{name}-node{node}.log", "w")  # noqa: SIM115 (closed with the test)
        procs.append(
            subprocess.Popen(
                cmd,
                env=subprocess_env(OMP_NUM_THREADS="1"),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def _kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL a node's launcher; its trainers die with it (damt.training.process)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        failed = [p.returncode for p in procs if p.poll() is not None]
        assert not failed, f"a node exited ({failed}) before {path.name} was written"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.5)


def _rendezvous(run_id: str) -> tuple[Rendezvous, TCPStore]:
    """Two nodes' rendezvous and its store, hosted here (it serves while the store lives)."""
    store = host_rendezvous_store(TIMEOUT_S)
    return Rendezvous(2, f"127.0.0.1:{store.port}", run_id, TIMEOUT_S), store


def _two_node_run(tmp_path: Path, epochs: int, run_id: str):
    """A 4-subject training set, a two-node config, the torchrun command of one "node" and the
    rendezvous store (keep it referenced while the nodes run).
    """
    files = write_training_set(tmp_path / "data", n_subjects=4, shape=(64, 64, 64))
    config = write_config(
        tmp_path / "c.yaml",
        epochs=epochs,
        batch_size_per_gpu=1,
        nodes=2,
        collective_timeout_s=TIMEOUT_S,
    )
    run_dir = tmp_path / "run"
    args = train_args(files, config, run_dir, "--cores", "1")
    rendezvous, store = _rendezvous(run_id)
    return files, config, run_dir, torchrun_command(1, args, rendezvous), store


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_nodes_train_get_killed_resume_and_export(tmp_path):
    # Run 1, the real `damt train` on both nodes: killed (both nodes) after its first epoch.
    files, config, run_dir, cmd, _store = _two_node_run(tmp_path, epochs=3, run_id="nodes-a1")
    first = _start_nodes(cmd, tmp_path, "first")
    _wait_for(run_dir / "checkpoints" / "checkpoint_0001.pt", first, timeout=240)
    for proc in first:
        _kill_node(proc)
    deadline = time.monotonic() + 30
    while lock_holder(run_dir) is not None:  # the trainers die with their launchers
        assert time.monotonic() < deadline, f"trainers still alive: {lock_holder(run_dir)}"
        time.sleep(0.2)
    first_log = (tmp_path / "first-node0.log").read_text() + (
        tmp_path / "first-node1.log"
    ).read_text()
    assert "training 4 subjects on 2 cpu process(es)" in first_log, first_log[-3000:]

    # Run 2: the same trainer (run_pretraining, what `damt train` runs) on two new launchers
    # resumes the killed run, finishes and exports; every rank then saves its parameters.
    rendezvous, _store2 = _rendezvous("nodes-a2")
    prefix = torchrun_command(1, [], rendezvous)[:-2]
    worker = [*prefix, str(REPO / "tests" / "ddp_worker.py"), str(files.root), str(config)]
    second = _start_nodes([*worker, str(tmp_path)], tmp_path, "second")
    for node, proc in enumerate(second):
        assert proc.wait(timeout=240) == 0, (tmp_path / f"second-node{node}.log").read_text()
    second_log = (tmp_path / "second-node0.log").read_text() + (
        tmp_path / "second-node1.log"
    ).read_text()
    # It started at the second epoch (the progress bars of rank 0).
    assert "epoch 2/3" in second_log and "epoch 1/3" not in second_log, second_log[-3000:]

    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    card = json.loads((run_dir / "model_card.json").read_text())["pretraining"]
    assert (card["world_size"], card["nodes"], card["global_batch"]) == (2, 2, 2)
    assert card["epochs"] == 3 and card["steps"] == 3 * 2  # 4 subjects, 2 ranks, batch 1
    assert (run_dir / "encoder.safetensors").is_file()
    # One record per epoch: the killed run's first, the resumed run's other two.
    epochs = [r["epoch"] for r in read_records(run_dir)]
    assert epochs == [0, 1, 2], epochs


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("dead_rank", [0, 1])
def test_a_dead_node_stops_the_other_within_the_timeout(tmp_path, dead_rank):
    """Either node dies: rank 0's (its torchrun hosts the trainers' process-group store) or
    the other. The survivor fails within the collective timeout and says why.
    """
    _, _, run_dir, cmd, _store = _two_node_run(tmp_path, epochs=50, run_id="nodes-b")
    nodes = _start_nodes(cmd, tmp_path, "run")
    _wait_for(run_dir / "checkpoints" / "checkpoint_0001.pt", nodes, timeout=240)
    # The rendezvous numbers the nodes as they join; only rank 0 logs the training summary.
    logs = [tmp_path / f"run-node{node}.log" for node in (0, 1)]
    rank0 = next(n for n in (0, 1) if "training 4 subjects" in logs[n].read_text())
    victim = rank0 if dead_rank == 0 else 1 - rank0
    _kill_node(nodes[victim])  # mid-epoch: the node's launcher and its trainer, SIGKILL
    start = time.monotonic()
    try:
        status = nodes[1 - victim].wait(timeout=TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        _kill_node(nodes[1 - victim])
        pytest.fail(f"the other node still ran {TIMEOUT_S + 60} s after the first one died")
    elapsed = time.monotonic() - start
    log = logs[1 - victim].read_text()
    assert status != 0, log[-3000:]
    assert elapsed < TIMEOUT_S + 30, f"{elapsed:.0f} s"
    # The trainer's error names its rank and host (the other node's death broke its
    # collective), and torchrun's failure report names the rank that failed on this node.
    survivor = 1 - dead_rank
    assert re.search(rf"damt train \(rank {survivor} of 2 on [^)]+\): error: ", log), log[-3000:]
    assert "Root Cause" in log, log[-3000:]


def test_the_rule_resources_grant_gpus_per_node():
    assert pretrain_resources(run_settings(nodes=1, gpus=4)) == {"gpu": 4}
    resources = pretrain_resources(run_settings(nodes=2, gpus=4))
    assert granted_gpus(resources) == 4
    assert granted_gpus({**resources, "gres": "gpu:a100:4"}) == 4
    assert granted_gpus(pretrain_resources(run_settings(nodes=2, gpus=0))) == 0


@pytest.mark.slow
def test_several_nodes_outside_slurm_stop_the_workflow_before_any_job(
    demo_cohort, tmp_path, monkeypatch
):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # a test run inside a SLURM job
    config = workflow_config(tmp_path, [{"path": str(demo_cohort)}], pretrain={"nodes": 2})
    proc = run_snakemake("--cores", "1", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert "pretrain.nodes is 2 but the pretrain job would run outside a SLURM" in proc.stderr
    # Only parsing wrote (the discovery files): no job ran.
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["discovery"]
