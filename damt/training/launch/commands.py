"""The trainer's command lines: torchrun on one node, or srun starting one torchrun per node of a
SLURM allocation, meeting at a rendezvous store this launcher hosts."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from damt.training.launch.checks import LaunchError
from damt.training.settings import TrainSettings

if TYPE_CHECKING:
    from torch.distributed import TCPStore


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
    # torchrun acts on these signals only, not on the stop signals (SIGTERM, SIGUSR1), which
    # its caller makes it ignore: on SIGTERM it would kill the trainers 30 s later, or at once
    # on a second SIGTERM (SLURM signals every process of a job step), before their checkpoint.
    signals = "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT"
    return [
        sys.executable, "-m", "torch.distributed.run", *placement, signals,
        "-m", "damt", *train_args,
    ]  # fmt: skip


def trainer_command(n_processes: int, train_args: list[str]) -> list[str]:
    """``damt train`` on this node: one process directly (torchrun would add a process and a
    torch import, seconds per job on a CPU, for nothing), several under torchrun."""
    if n_processes == 1:
        return [sys.executable, "-m", "damt", *train_args]
    return torchrun_command(n_processes, train_args)


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
    settings: TrainSettings,
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
    nodes = settings.nodes
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
        timeout_s=settings.collective_timeout_s,
    )
    step = [
        "srun",
        f"--nodes={nodes}",
        f"--ntasks={nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cores}",
        *([f"--gres=gpu:{settings.gpus}"] if settings.gpus else []),
        "--kill-on-bad-exit=1",
        "--label",
    ]
    # Each node's torchrun ignores the stop signals, as the local one does (job.py): the
    # trainers stop on them by themselves, and a torchrun that acted on one would kill them
    # before their checkpoint is written.
    shield = ["sh", "-c", 'trap "" TERM USR1; exec "$0" "$@"']
    return [*step, *shield, *torchrun_command(n_processes, train_args, rendezvous)]
