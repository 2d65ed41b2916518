"""What the workflow's pretrain job does: check, plan, then train/resume under torchrun (or srun
over several nodes) or export the finished run; and requeue the job when a stop signal (a
cluster's preemption or time limit) stopped the trainers with their state saved."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path

import yaml

from damt.io import write_json_atomic
from damt.training.launch.checks import LaunchError, check_run_free, check_run_settings
from damt.training.launch.commands import host_rendezvous_store, multinode_command, trainer_command
from damt.training.launch.signature import (
    SIGNATURE_FILE,
    Action,
    Plan,
    plan_pretraining,
    signature,
    supersede,
)
from damt.training.process import (
    STOP_SIGNALS,
    children,
    die_with_parent,
    ignore_stop_signals,
    read_stops,
    take_stopped,
)
from damt.training.settings import TrainSettings

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.yaml"


class PretrainingStopped(LaunchError):
    """The trainers stopped on a stop signal with a checkpoint; the job runs again to resume
    (requeued when SLURM allows it)."""


def launch(
    pretrain: Mapping,
    manifest: Path,
    label_table: Path,
    tables: dict[str, Path | None],
    run_dir: Path,
    granted_gpus: int,
    cores: int,
    log_file: str | None = None,
    evaluation: dict | None = None,
    preprocessing: dict | None = None,
) -> None:
    """Plan, then train/resume (under torchrun for several processes) or export the finished run.

    ``pretrain`` is the run's validated ``pretrain`` section (the rule's params), parsed here
    once into the :class:`TrainSettings` that the checks, the signature and the commands read;
    ``evaluation`` the ``probe`` keys the held-out k-NN evaluation reads (``phenotypes``,
    ``targets``); ``preprocessing`` the ``cache`` keys that made the cache (for the model card).
    """
    # Validate everything before the run folder is touched: a bad config must never cost the
    # checkpoints of a trained model (supersede() below moves them aside).
    settings = check_run_settings(pretrain, granted_gpus, hardware=True)
    check_run_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        current = signature(settings, manifest, label_table, tables)
    except ValueError as exc:  # a data-scaling subset larger than the training subjects
        raise LaunchError(f"{exc} (nothing was trained, moved or deleted)") from exc
    plan = plan_pretraining(run_dir, current, settings.retrain, settings.epochs)
    log.info("pretrain plan: %s (%s)", plan.action, plan.reason)
    if plan.supersede:
        supersede(run_dir)
    # The run's settings (config files and command-line overrides merged) for the trainer.
    config_file = run_dir / RUN_CONFIG_FILE
    run_config = {
        "pretrain": dict(settings.section),
        "probe": dict(evaluation or {}),
        "cache": dict(preprocessing or {}),
    }
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
    _run_trainer(plan, settings, train_args, cores, run_dir, log_file)


def _run_trainer(
    plan: Plan,
    settings: TrainSettings,
    train_args: list[str],
    cores: int,
    run_dir: Path,
    log_file: str | None,
) -> None:
    """Start ``damt train`` as the plan says: one exporting process, the trainers on this node
    (one directly, several under torchrun), or srun over the allocation's nodes; a failure is a
    LaunchError saying how the run resumes."""
    n_processes = settings.processes_per_node
    if plan.action == Action.EXPORT:
        # No training: one process on this node exports the weights of the last checkpoint.
        n_processes = 1
        cmd = trainer_command(n_processes, train_args)
    elif settings.nodes > 1:
        # Referenced until this function returns: the store serves for the whole srun.
        store = host_rendezvous_store(settings.collective_timeout_s)
        cmd = multinode_command(settings, n_processes, cores, train_args, os.environ, store.port)
    else:
        cmd = trainer_command(n_processes, train_args)
    log.info("running: %s", " ".join(cmd))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n_processes))}
    take_stopped(run_dir)  # a stop the job before could not read (it was killed first)
    stops = read_stops(run_dir)
    if stops and plan.action == Action.RESUME:
        log.info("the run was stopped %d time(s) by a signal; the last: %s", len(stops), stops[-1])
    with (
        open(log_file, "a", encoding="utf-8") if log_file else nullcontext() as out,
        _forwarding_stop_signals() as launched,
    ):
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            preexec_fn=_launched_process,
        )
        launched.append(proc.pid)
        proc.wait()
    stopped = take_stopped(
        run_dir,
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        slurm_job=os.environ.get("SLURM_JOB_ID"),
    )
    if stopped is not None:
        _requeue(stopped, run_dir)
    if proc.returncode != 0:
        check_run_free(run_dir)  # a live trainer holding the lock is the real cause: name it
        nodes = cmd[0] == "srun"
        launcher = "srun" if nodes else "torchrun" if n_processes > 1 else "damt train"
        raise LaunchError(
            f"training failed ({launcher} exit status {proc.returncode}); "
            f"the run resumes from its latest checkpoint in {run_dir} when the job runs again "
            "(snakemake --rerun-incomplete)"
            + (f"; see {log_file} for the trainer's error" if log_file else "")
            + (" (its lines start with the node's number)" if nodes and log_file else "")
        )


def _launched_process() -> None:
    """In the launched process (the trainer, torchrun or srun) before it starts: it dies with
    this job, so that a killed Snakemake leaves no trainer behind holding the run lock; and it
    starts with the stop signals ignored: torchrun leaves them to the trainers (srun forwards
    them to its nodes), and a trainer acts on them once it is ready to stop cleanly
    (damt.training.process.StopSignal)."""
    die_with_parent()
    ignore_stop_signals()


@contextmanager
def _forwarding_stop_signals() -> Iterator[list[int]]:
    """While the trainers run: a stop signal to this job is passed on as SIGTERM to the
    launched process (the list it yields: torchrun, which ignores it, or srun, which passes it
    to its nodes) and to that process's children (the trainers, which stop at their next step),
    and this job waits for them instead of dying. SLURM signals every process of a job step
    itself; this covers a signal sent to the job's process alone. The trainers' own children
    (data-loader and compile workers) are left alone."""
    launched: list[int] = []

    def forward(signum: int, frame: object) -> None:
        log.warning(
            "received %s: the trainers stop at their next step", signal.Signals(signum).name
        )
        for pid in launched:
            for target in (pid, *children(pid)):
                with suppress(ProcessLookupError):
                    os.kill(target, signal.SIGTERM)

    before = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        yield launched
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _requeue(stopped: dict, run_dir: Path) -> None:
    """After the trainers stopped on a signal: requeue this SLURM job (``scontrol requeue``:
    the same job runs again and resumes from the checkpoint), and end the job with
    :class:`PretrainingStopped` either way."""
    where = (
        f"epoch {stopped.get('epoch', 0) + 1}, step {stopped.get('steps', 0)}"
        f" of {stopped.get('iters', '?')}"
    )
    said = f"training stopped by {stopped.get('signal', 'a signal')} in {where}, checkpoint saved"
    job = os.environ.get("SLURM_JOB_ID")
    if job and shutil.which("scontrol"):
        try:
            proc = subprocess.run(
                ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
            )
            failure = proc.stderr.strip() if proc.returncode else None
        except (OSError, subprocess.SubprocessError) as exc:
            failure = str(exc)
        if failure is None:
            log.warning("%s: requeued SLURM job %s, which resumes from there", said, job)
            raise PretrainingStopped(f"{said}; SLURM job {job} is requeued and resumes there")
        log.warning(
            "%s; scontrol requeue %s failed (%s): submit the job with --requeue (the profile "
            "does) or ask for JobRequeue=1", said, job, failure,
        )  # fmt: skip
    raise PretrainingStopped(
        f"{said}; run the workflow again to resume in {run_dir} (the profile's retries "
        "resubmit a failed job)"
    )
