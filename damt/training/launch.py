"""What the workflow's pretrain job does: decide whether to (re)train, then launch ``torchrun``.

A run folder holds ``checkpoints/`` and ``signature.json``: what the checkpoints were trained on
(the training subjects, the ``pretrain`` settings that shape the model, the feature columns and
the label table). Operational settings (``OPERATIONAL_KEYS``: threads, data loader workers,
logging, which checkpoints are kept, the policy itself) are not part of it. The
``pretrain.retrain`` policy compares it with the current inputs:

- a run that stopped before its last epoch resumes, unless its signature changed (then it
  could not be resumed meaningfully and starts afresh; under ``never`` it resumes, but refuses
  with an explanation when the feature columns or the label table changed);
- ``cohort``: a finished run with the same signature is kept (its weights are exported again,
  no training); a changed signature trains afresh;
- ``always``: a finished run trains afresh whenever the job runs;
- ``never``: a finished run is kept whatever changed.

A kept run is exported by ``damt train`` from its checkpoint alone (the network it trained and
the facts of its training), in one process.

Superseded checkpoints, metrics and TensorBoard files move to ``superseded/<time>/`` instead of
being deleted. Training runs as ``python -m torch.distributed.run --standalone --nnodes=1
--nproc_per_node=N -m damt train ...`` (torchrun with this interpreter): one process per GPU
(NCCL), or ``pretrain.cpu_processes`` processes with gloo when ``pretrain.gpus`` is 0.

With ``pretrain.nodes`` > 1 the job runs in a SLURM allocation of that many nodes: this launcher
(once, on the allocation's first node: it plans, moves and signs as above) starts one torchrun
per node with ``srun``, all of them meeting in a c10d rendezvous whose store this launcher
hosts (:func:`host_rendezvous_store`, :func:`multinode_command`). The world size is nodes ×
processes per node. The node count is part of the run signature (a run interrupted on N nodes
trains afresh on M under ``cohort``): the global batch, the learning rate and the sampler's
split of every epoch follow the world size, so the checkpoint's optimizer state and position in
the epoch belong to N.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow.parquet as pq
import yaml

from damt.io import HASH_CHARS, sha256_file, stable_hash, write_json_atomic
from damt.manifest import trains
from damt.split import scaling_subset

if TYPE_CHECKING:
    from torch.distributed import TCPStore

log = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"
RUN_CONFIG_FILE = "config.yaml"
TRAIN, RESUME, EXPORT = "train", "resume", "export"

# Keys of `pretrain` that change how a run is carried out or kept, not the model it trains, so
# they stay out of the signature: changing one neither trains a finished run again (retrain:
# cohort) nor moves an interrupted run aside instead of resuming it. num_workers is one of them
# because augmentation is seeded per item (seed, epoch, index), whatever worker draws it;
# attention and compile because they compute the same step (tests/test_attention.py). gpus,
# cpu_processes (global batch, learning rate), seed and deterministic do count.
OPERATIONAL_KEYS = frozenset(
    {
        "threads",  # CPU threads of the job
        "num_workers",  # DataLoader processes per training process
        "log_every_steps",  # TensorBoard and progress-bar cadence
        "save_every",  # which epochs' checkpoints are kept besides the latest
        "max_consecutive_nonfinite",  # when a failing run gives up
        "retrain",  # this policy
        "run_name",  # the run folder itself
        "attention",  # the same function and weights, computed by another kernel
        "compile",  # the same step, compiled
        "eval_every",  # a held-out k-NN score now and then: the model trains the same
        "eval_subjects",
        "keep_best",  # keeps a copy of one checkpoint
        "collective_timeout_s",  # how long a rank waits for the others before failing
    }
)


class LaunchError(RuntimeError):
    """The pretrain job cannot run as configured (the message says why and what to change)."""


@dataclass(frozen=True)
class Plan:
    """What the job will do, and why (logged)."""

    action: str  # train | resume | export
    reason: str
    supersede: bool = False  # move the existing checkpoints aside first
    # Write the current signature. Not when a kept run was trained on other inputs: its
    # signature still says on which (so a later retrain: cohort sees the difference).
    sign: bool = True


def training_subjects(manifest: str | Path, size: int | None = None) -> list[str]:
    """Subjects the trainer uses: status pass/warn with a training cache, not held out (sorted);
    of those, the data-scaling subset of ``size`` (``pretrain.subjects``)."""
    wanted = ["subject_id", "status", "has_cache", "split"]
    frame = pd.read_parquet(
        manifest, columns=[c for c in wanted if c in pq.read_schema(manifest).names]
    )
    return scaling_subset(frame.loc[trains(frame), "subject_id"].astype(str), size)


def model_settings(pretrain: dict) -> dict:
    """The ``pretrain`` settings a trained model depends on: all but ``OPERATIONAL_KEYS``, and
    of ``presets`` only the one in use, without its ``checkpointing``.
    """
    settings = {k: v for k, v in pretrain.items() if k not in OPERATIONAL_KEYS}
    # One node is what every run was before `nodes` existed: leaving it out keeps their
    # signatures, so an upgrade neither retrains finished runs nor restarts interrupted ones.
    if settings.get("nodes") == 1:
        del settings["nodes"]
    # Likewise the switches that are off by default (runs before them trained without): no
    # accumulation, no curriculum, and no augmentation with a probability of 0 (its ranges
    # then shape nothing).
    if settings.get("accumulate_steps") == 1:
        del settings["accumulate_steps"]
    # The subset itself enters through the training subjects' hash; its size is a setting.
    if settings.get("subjects", 0) is None:
        del settings["subjects"]
    if settings.get("curriculum") == []:
        del settings["curriculum"]
    if isinstance(settings.get("augment"), dict):
        used = {k: v for k, v in settings["augment"].items() if v.get("prob", 0) > 0}
        if used:
            settings["augment"] = used
        else:
            del settings["augment"]
    # Likewise today's NT-Xent without a queue and a switched-off EMA (what every run was before
    # these sections existed); otherwise only the settings the method uses enter.
    contrastive = _contrastive_signature(settings.pop("contrastive", None) or {})
    if contrastive:
        settings["contrastive"] = contrastive
    ema = settings.pop("ema", None) or {}
    if ema.get("enabled"):
        settings["ema"] = ema
    presets, preset = pretrain.get("presets"), pretrain.get("preset")
    if isinstance(presets, dict) and preset in presets:
        # Gradient checkpointing trades memory for time; the network and its steps are the same.
        in_use = {k: v for k, v in presets[preset].items() if k != "checkpointing"}
        settings["presets"] = {preset: in_use}
    return settings


def _contrastive_signature(section: dict) -> dict | None:
    """The part of ``pretrain.contrastive`` the trained model depends on: None for NT-Xent
    without a queue (the original), else the method, its own settings and what is exported."""
    method = section.get("method", "ntxent")
    if method == "ntxent":
        queue = section.get("queue_size", 0)
        return {"method": method, "queue_size": queue} if queue else None
    kept = {"method": method, method: section.get(method, {})}
    if method == "dino":
        kept["export"] = section.get("export", "student")
    return kept


def signature(
    pretrain: dict, manifest: str | Path, label_table: str | Path, tables: dict[str, Path | None]
) -> dict:
    """What a trained model depends on, beyond feature values: see the module docstring."""
    subjects = training_subjects(manifest, pretrain.get("subjects"))
    columns = {
        name: pq.read_schema(path).names
        for name, path in sorted(tables.items())
        if path is not None and Path(path).is_file()
    }
    return {
        "subjects": hashlib.sha256("\n".join(subjects).encode()).hexdigest()[:HASH_CHARS],
        "n_subjects": len(subjects),
        "pretrain": stable_hash(model_settings(pretrain)),
        "feature_columns": stable_hash(columns),
        "label_table": sha256_file(label_table)[:HASH_CHARS],
    }


def _epochs_done(run_dir: Path) -> int | None:
    """Epochs of the latest checkpoint; None when there is none."""
    from damt.training.checkpoint import load_latest

    state = load_latest(run_dir / "checkpoints")
    return None if state is None else int(state["epoch"])


def previous_signature(run_dir: Path) -> dict | None:
    """The run's ``signature.json``, or None when it is missing or unreadable."""
    try:
        previous = json.loads((run_dir / SIGNATURE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return previous if isinstance(previous, dict) else None


def plan_run(run_dir: Path, current: dict, policy: str, epochs: int) -> Plan:
    """Decide what to do with the run folder (pure apart from reading its files)."""
    done = _epochs_done(run_dir)
    if done is None:
        return Plan(TRAIN, "no checkpoint yet")
    finished = done >= epochs
    previous = previous_signature(run_dir)
    changed = sorted(k for k in current if previous is None or previous.get(k) != current[k])
    changed = [k for k in changed if k != "n_subjects"]
    what = ", ".join(changed) if changed else "nothing"
    if not finished:
        if changed and policy != "never":
            return Plan(
                TRAIN, f"interrupted run trained on other inputs ({what} changed)", supersede=True
            )
        targets = [k for k in changed if k in ("feature_columns", "label_table")]
        if targets:
            # Its regression and atlas heads learnt the former columns and classes: training
            # on, on other ones, would be meaningless (and fails when their number changed).
            raise LaunchError(
                f"pretrain.retrain: never keeps {run_dir}, but that run stopped after epoch "
                f"{done} of {epochs} and its {' and '.join(targets)} changed since (the heads "
                "learnt the former ones), so it cannot resume on the current inputs. Restore "
                "the inputs it was trained with, set pretrain.retrain: cohort to train afresh "
                f"(its checkpoints move to superseded/), or set pretrain.epochs: {done} to "
                "keep it as it is (warmup_epochs must stay below it)."
            )
        return Plan(RESUME, "interrupted run: resuming from its latest checkpoint")
    if policy == "never":
        return Plan(EXPORT, f"finished run kept (retrain: never; {what} changed)", sign=not changed)
    if policy == "always":
        return Plan(TRAIN, "finished run trained again (retrain: always)", supersede=True)
    if changed:
        return Plan(TRAIN, f"{what} changed (retrain: cohort)", supersede=True)
    return Plan(EXPORT, "same training subjects and settings: finished run kept (retrain: cohort)")


def supersede(run_dir: Path) -> Path:
    """Move the run's checkpoints, metrics and TensorBoard files to ``superseded/<time>/``."""
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    target = run_dir / "superseded" / stamp
    target.mkdir(parents=True)
    for name in ("checkpoints", "metrics.jsonl", "tb", SIGNATURE_FILE):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), target / name)
    log.info("moved the previous run's checkpoints and metrics to %s", target)
    return target


def check_gpus(pretrain: dict, granted: int) -> None:
    """Refuse a GPU grant that differs from the ``pretrain`` settings, or half precision on the
    CPU, saying how to fix it (at parse time, not after the cohort stages have run).
    """
    wanted = pretrain["gpus"]
    if wanted == 0 and pretrain["precision"] in ("bf16", "fp16"):
        raise LaunchError(
            f"pretrain.precision is {pretrain['precision']} but pretrain.gpus is 0: "
            "half precision is GPU-only (see damt.training.step.resolve_precision); use "
            "precision: auto or fp32 on the CPU, or set pretrain.gpus."
        )
    if granted != wanted:
        raise LaunchError(
            f"pretrain.gpus is {wanted} but this job was given gpu={granted}. Snakemake scales a "
            "job's resources down to the --resources limit without a word, which would change "
            "the global batch size and the learning rate. Run with --resources gpu="
            f"{wanted} (or more), or set pretrain.gpus: {granted}."
        )


def check_hardware(pretrain: dict) -> None:
    """Refuse ``pretrain.gpus`` GPUs where fewer are visible to the job (before anything moves)."""
    wanted = pretrain["gpus"]
    if wanted <= 0:
        return
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < wanted:
        raise LaunchError(
            f"pretrain.gpus is {wanted} but this job sees {visible} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            f"run it where {wanted} GPUs are available or set pretrain.gpus: {visible}. "
            "Nothing was trained, moved or deleted."
        )


def check_nodes(pretrain: dict, environ: Mapping[str, str], cluster_executor: bool = False) -> None:
    """Refuse ``pretrain.nodes`` > 1 where the job cannot reach other nodes: outside a SLURM
    allocation (no ``SLURM_JOB_ID``), unless Snakemake submits the job to SLURM
    (``cluster_executor``: the job then runs inside an allocation of its own).
    """
    nodes = pretrain["nodes"]
    if nodes > 1 and not cluster_executor and "SLURM_JOB_ID" not in environ:
        raise LaunchError(
            f"pretrain.nodes is {nodes} but the pretrain job would run outside a SLURM "
            "allocation (no SLURM_JOB_ID): several nodes are reached through SLURM. Run with "
            f"--profile profiles/slurm, or start Snakemake inside an allocation of {nodes} "
            f"nodes (salloc --nodes={nodes} --ntasks-per-node=1 ...), or set pretrain.nodes: 1. "
            "Nothing was trained, moved or deleted."
        )


def check_run_settings(
    config: dict, granted_gpus: int | None = None, hardware: bool = False
) -> None:
    """Every check of a run's settings, in one place: the cross-key checks of the trainer
    (:meth:`damt.training.settings.TrainSettings.from_config`: warmup below epochs, crop sizes
    the network's stride needs, ...), the GPU grant (``granted_gpus``: Snakemake's resources,
    GPUs per node) and, with ``hardware``, the GPUs the job can see and, for several nodes,
    the SLURM allocation it runs in.

    The Snakefile calls it at parse time (so ``snakemake -n`` refuses a bad config before any
    job runs) and the pretrain job before it moves or deletes anything.
    """
    from damt.training.settings import TrainSettings

    try:
        TrainSettings.from_config(config)
    except (ValueError, KeyError) as exc:
        raise LaunchError(
            f"invalid pretrain settings: {exc}. Fix the config and run again (nothing was "
            "trained, moved or deleted)."
        ) from exc
    if granted_gpus is not None:
        check_gpus(config["pretrain"], granted_gpus)
    if hardware:
        check_hardware(config["pretrain"])
        check_nodes(config["pretrain"], os.environ)


def pretrain_resources(pretrain: dict) -> dict:
    """The pretrain rule's resources.

    One node: ``gpu`` (Snakemake's ``--resources gpu=N`` limit; the SLURM plugin's ``--gpus``).
    Several: what makes snakemake-executor-plugin-slurm ask for ``nodes`` nodes with one task
    and ``gpus`` GPUs each, and run the job's script once, in the batch step on the first node,
    where :func:`launch` starts the per-node launchers itself with ``srun``:

    - ``nodes`` becomes ``--nodes=N``; ``mpi`` (the plugin's launch mode for multi-task jobs)
      runs the job without the plugin's own one-task ``srun`` around it, and ``tasks`` becomes
      ``--ntasks=N``: one task per node;
    - ``gres: gpu:G`` becomes ``--gres=gpu:G``, which SLURM counts per node (``--gpus``, from
      ``gpu``, counts per job);
    - ``tasks_per_gpu: 0`` keeps the plugin from turning ``tasks`` into ``--ntasks-per-gpu``
      for a GPU job (its issues #316 and #459: a rule with ``gpu=2`` ran its script twice).
    """
    nodes, gpus = pretrain["nodes"], pretrain["gpus"]
    if nodes == 1:
        return {"gpu": gpus}
    resources = {"nodes": nodes, "tasks": nodes, "mpi": "srun"}
    if gpus:
        resources |= {"gres": f"gpu:{gpus}", "tasks_per_gpu": 0}
    return resources


def granted_gpus(resources: Mapping) -> int:
    """GPUs per node that the job's resources (:func:`pretrain_resources`, maybe changed by a
    profile) grant: ``gpu``, or the count of a ``gres`` of ``gpu:G`` or ``gpu:TYPE:G``.
    """
    if "gpu" in resources:
        return int(resources["gpu"])
    match = re.fullmatch(r"gpu(?::[^:]+)?:(\d+)", str(resources.get("gres", "")))
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class Rendezvous:
    """Where the torchrun of every node meets (c10d on ``endpoint``, ``host:port``)."""

    nnodes: int
    endpoint: str
    run_id: str
    timeout_s: int  # how long the nodes wait for each other to join


def torchrun_command(
    n_processes: int, train_args: list[str], rendezvous: Rendezvous | None = None
) -> list[str]:
    """torchrun (of this interpreter) running ``damt train``: on one node (``--standalone``),
    or as one of ``rendezvous.nnodes`` nodes. The c10d rendezvous numbers the nodes as they
    join (torchrun ignores ``--node-rank`` for it), so every node runs the same command.
    """
    if rendezvous is None:
        placement = ["--standalone", "--nnodes=1", f"--nproc_per_node={n_processes}"]
    else:
        placement = [
            f"--nnodes={rendezvous.nnodes}",
            f"--nproc-per-node={n_processes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous.endpoint}",
            f"--rdzv-id={rendezvous.run_id}",
            # The launcher hosts the store (host_rendezvous_store), no agent.
            f"--rdzv-conf=join_timeout={rendezvous.timeout_s},is_host=false",
            "--max-restarts=0",
        ]
    return [sys.executable, "-m", "torch.distributed.run", *placement, "-m", "damt", *train_args]


def _slurm(*args: str) -> str:
    """Run a SLURM command; its stdout (a LaunchError with its message when it fails)."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise LaunchError(f"{' '.join(args)} failed: {detail}") from exc
    return proc.stdout


def allocation_hosts(environ: Mapping[str, str]) -> list[str]:
    """Node names of the SLURM allocation the job runs in, first node first."""
    nodelist = environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        # The plugin's jobstep drops every SLURM variable but the job's identity: ask slurmctld.
        record = _slurm("scontrol", "--oneliner", "show", "job", environ["SLURM_JOB_ID"])
        match = re.search(r"(?:^|\s)NodeList=(\S+)", record)
        if match is None:
            raise LaunchError(f"no NodeList in slurmctld's record of the job: {record}")
        nodelist = match.group(1)
    return _slurm("scontrol", "show", "hostnames", nodelist).split()


def node_address(node: str) -> str:
    """The address SLURM reaches ``node`` at (its ``NodeAddr``; usually its host name)."""
    record = _slurm("scontrol", "--oneliner", "show", "node", node)
    match = re.search(r"(?:^|\s)NodeAddr=(\S+)", record)
    return match.group(1) if match else node


def host_rendezvous_store(timeout_s: int) -> TCPStore:
    """Host the c10d rendezvous store of a several-node run in this process (any free port,
    every interface); it serves as long as the returned store lives.

    Left to torchrun, the store lives in the agent of the node whose address is the endpoint:
    when that node dies, the other nodes' agents lose the rendezvous and crash with a
    ``RendezvousConnectionError``, killing their trainers before these report the failed
    collective and without torchrun's failure report. Hosted by the launcher, which lives as
    long as the job, a dead node is a failure of the other nodes' trainers like any other.
    """
    from torch.distributed import TCPStore

    timeout = dt.timedelta(seconds=timeout_s)
    return TCPStore("localhost", 0, is_master=True, wait_for_workers=False, timeout=timeout)


def multinode_command(
    pretrain: dict,
    n_processes: int,
    cores: int,
    train_args: list[str],
    environ: Mapping[str, str],
    store_port: int,
) -> list[str]:
    """``srun`` starting one torchrun per node of the allocation, ``n_processes`` each.

    The nodes meet at the rendezvous store this launcher hosts on ``store_port``
    (:func:`host_rendezvous_store`) on the allocation's first node, where SLURM runs the batch
    script and so this launcher. Its id is the SLURM job's, so a retry (a new job) never meets
    a node of the previous one. ``--kill-on-bad-exit`` ends every node when one fails;
    ``--label`` prefixes each line of the log with its node's task number.
    """
    nodes = pretrain["nodes"]
    hosts = allocation_hosts(environ)
    if len(hosts) != nodes:
        raise LaunchError(
            f"pretrain.nodes is {nodes} but the SLURM allocation has {len(hosts)} node(s) "
            f"({', '.join(hosts)}); ask for {nodes} nodes or set pretrain.nodes: {len(hosts)}"
        )
    rendezvous = Rendezvous(
        nnodes=nodes,
        endpoint=f"{node_address(hosts[0])}:{store_port}",
        run_id=f"damt-{environ['SLURM_JOB_ID']}",
        timeout_s=pretrain["collective_timeout_s"],
    )
    step = [
        "srun",
        f"--nodes={nodes}",
        f"--ntasks={nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cores}",
        *([f"--gres=gpu:{pretrain['gpus']}"] if pretrain["gpus"] else []),
        "--kill-on-bad-exit=1",
        "--label",
    ]
    return [*step, *torchrun_command(n_processes, train_args, rendezvous)]


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
    p = pretrain
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        current = signature(pretrain, manifest, label_table, tables)
    except ValueError as exc:  # a data-scaling subset larger than the training subjects
        raise LaunchError(f"{exc} (nothing was trained, moved or deleted)") from exc
    plan = plan_run(run_dir, current, p["retrain"], p["epochs"])
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
        "train",
        "--config",
        str(config_file),
        "--manifest",
        str(manifest),
        "--label-table",
        str(label_table),
        "--out",
        str(run_dir),
        "--cores",
        str(cores),
    ]
    for name, path in tables.items():
        if path is not None:
            train_args += [f"--{name.replace('_', '-')}", str(path)]
    n_processes = p["gpus"] if p["gpus"] > 0 else p["cpu_processes"]
    if plan.action == EXPORT:
        # No training: one process on this node exports the weights of the last checkpoint.
        cmd = torchrun_command(1, train_args)
        n_processes = 1
    elif p["nodes"] > 1:
        # Referenced until this function returns: the store serves for the whole srun.
        store = host_rendezvous_store(p["collective_timeout_s"])
        cmd = multinode_command(p, n_processes, cores, train_args, os.environ, store.port)
    else:
        cmd = torchrun_command(n_processes, train_args)
    log.info("running: %s", " ".join(cmd))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n_processes))}
    from damt.training.checkpoint import die_with_parent

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


def check_run_free(run_dir: Path) -> None:
    """Refuse a run folder whose lock a live process holds (before anything in it moves)."""
    from damt.training.checkpoint import lock_holder

    holder = lock_holder(run_dir)
    if holder is not None:
        raise LaunchError(
            f"{run_dir} is being trained by another process ({holder}): a trainer left from an "
            "earlier run, or a second workflow on the same results. Wait for it to finish, or "
            "stop it (kill <pid>), then run again; --rerun-incomplete alone does not help while "
            "it runs."
        )
