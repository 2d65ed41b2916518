"""What the workflow's pretrain job does: check, plan, then train/resume under torchrun (or srun
over several nodes) or export the finished run."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import yaml

from damt.io import write_json_atomic
from damt.training.launch.checks import LaunchError, check_run_free, check_run_settings
from damt.training.launch.commands import host_rendezvous_store, multinode_command, torchrun_command
from damt.training.launch.signature import (
    SIGNATURE_FILE,
    Action,
    Plan,
    plan_pretraining,
    signature,
    supersede,
)

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.yaml"


def launch(
    pretrain: dict,
    manifest: Path,
    label_table: Path,
    tables: dict[str, Path | None],
    run_dir: Path,
    granted_gpus: int,
    cores: int,
    log_file: str | None = None,
    evaluation: dict | None = None,
) -> None:
    """Plan, then train/resume under torchrun or export the finished run.

    ``pretrain`` is the config's ``pretrain`` section (the rule's params); ``evaluation`` the
    ``probe`` keys the held-out k-NN evaluation reads (``phenotypes``, ``targets``).
    """
    # Validate everything before the run folder is touched: a bad config must never cost the
    # checkpoints of a trained model (supersede() below moves them aside).
    check_run_settings({"pretrain": pretrain}, granted_gpus, hardware=True)
    check_run_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        current = signature(pretrain, manifest, label_table, tables)
    except ValueError as exc:  # a data-scaling subset larger than the training subjects
        raise LaunchError(f"{exc} (nothing was trained, moved or deleted)") from exc
    plan = plan_pretraining(run_dir, current, pretrain["retrain"], pretrain["epochs"])
    log.info("pretrain plan: %s (%s)", plan.action, plan.reason)
    if plan.supersede:
        supersede(run_dir)
    # The run's settings (config files and command-line overrides merged) for the trainer.
    config_file = run_dir / RUN_CONFIG_FILE
    run_config = {"pretrain": pretrain, "probe": dict(evaluation or {})}
    config_file.write_text(yaml.safe_dump(run_config, sort_keys=False))
    if plan.sign:
        write_json_atomic(run_dir / SIGNATURE_FILE, current)
    train_args = [
        "train", "--config", str(config_file), "--manifest", str(manifest),
        "--label-table", str(label_table), "--out", str(run_dir), "--cores", str(cores),
    ]  # fmt: skip
    for name, path in tables.items():
        if path is not None:
            train_args += [f"--{name.replace('_', '-')}", str(path)]
    _run_trainer(plan, pretrain, train_args, cores, run_dir, log_file)


def _run_trainer(
    plan: Plan,
    pretrain: dict,
    train_args: list[str],
    cores: int,
    run_dir: Path,
    log_file: str | None,
) -> None:
    """Start ``damt train`` as the plan says: one exporting process, torchrun on this node, or
    srun over the allocation's nodes; a failure is a LaunchError saying how the run resumes."""
    n_processes = pretrain["gpus"] if pretrain["gpus"] > 0 else pretrain["cpu_processes"]
    if plan.action == Action.EXPORT:
        # No training: one process on this node exports the weights of the last checkpoint.
        cmd = torchrun_command(1, train_args)
        n_processes = 1
    elif pretrain["nodes"] > 1:
        # Referenced until this function returns: the store serves for the whole srun.
        store = host_rendezvous_store(pretrain["collective_timeout_s"])
        cmd = multinode_command(pretrain, n_processes, cores, train_args, os.environ, store.port)
    else:
        cmd = torchrun_command(n_processes, train_args)
    log.info("running: %s", " ".join(cmd))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n_processes))}
    from damt.training.process import die_with_parent

    # torchrun (and, through `damt train`, each trainer) dies with this job: a killed Snakemake
    # leaves no trainer behind holding the run lock.
    if log_file:
        with open(log_file, "a", encoding="utf-8") as out:
            proc = subprocess.run(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
    else:
        proc = subprocess.run(cmd, env=env, preexec_fn=die_with_parent)
    if proc.returncode != 0:
        check_run_free(run_dir)  # a live trainer holding the lock is the real cause: name it
        nodes = cmd[0] == "srun"
        raise LaunchError(
            f"training failed ({'srun' if nodes else 'torchrun'} exit status {proc.returncode}); "
            f"the run resumes from its latest checkpoint in {run_dir} when the job runs again "
            "(snakemake --rerun-incomplete)"
            + (f"; see {log_file} for the trainer's error" if log_file else "")
            + (" (its lines start with the node's number)" if nodes and log_file else "")
        )
