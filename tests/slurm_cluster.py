"""A real single-node SLURM cluster for tests: munged, slurmctld and slurmd from a temp folder.

Debian 12's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` (SLURM 22.05) run unchanged;
only their configuration is ours. Everything lives in one temporary folder (configuration, state,
spool, logs, munge key and socket, fake GPU devices): nothing under /etc or /run is written, and
clients find this cluster through ``SLURM_CONF``. The daemons run in the foreground as children of
the test process and are stopped by PID, also when the test fails.

Choices that make one small machine behave like a cluster node:
- no cgroups (``proctrack/linuxproc``, ``task/none``): containers rarely delegate cgroups;
- no accounting database (``accounting_storage/none``), like many small clusters: ``sacct`` does
  not work, jobs are read back from slurmctld (``scontrol``, kept ``MinJobAge`` seconds after they
  end) and from the job completion log (``jobcomp/filetxt``);
- the node advertises ``cpus``, ``mem_mb`` and ``gpus`` rather than the real hardware
  (``SlurmdParameters=config_overrides``), so the resource requests of a real cluster profile are
  accepted unchanged; without cgroups nothing is enforced, jobs just share the real cores;
- GPUs are GRES backed by character devices made with ``mknod c 195 N`` (the NVIDIA major):
  slurmd refuses plain files, and a GRES count without device files drains the node;
- several nodes (``nodes`` > 1) are several slurmd on this machine, SLURM's multiple-slurmd mode
  (Debian's build has it): each with a node name, a port, a spool folder, a PID file and a log
  of its own (``%n`` in slurm.conf), all at NodeAddr 127.0.0.1. Jobs then span "nodes" that
  share the machine's cores.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# Commands the harness and the snakemake SLURM executor call.
BINARIES = (
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "scontrol",
    "sinfo",
    "scancel",
)
INSTALL_HINT = "apt-get install slurmctld slurmd slurm-client munge (as .ci/run does)"
NVIDIA_MAJOR = 195
# Finished jobs stay visible to squeue/scontrol this long. The executor plugin's squeue status
# check needs at least 3 x its first status interval, and the test reads the jobs back afterwards.
MIN_JOB_AGE_S = 1200


class ClusterError(RuntimeError):
    """The test cluster could not be started; the message carries the daemons' logs."""


class SlurmCommandError(RuntimeError):
    """A SLURM client command failed."""


def unavailable_reason() -> str | None:
    """Why this machine cannot run the test cluster, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the SLURM test cluster needs Linux"
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return f"SLURM/munge commands not found ({', '.join(missing)}): {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "the SLURM test cluster runs its daemons as root (SlurmUser=root) and needs mknod"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            os.mknod(Path(tmp) / "gpu", stat.S_IFCHR | 0o600, os.makedev(NVIDIA_MAJOR, 0))
        except OSError as err:
            return f"cannot create character devices for fake GPUs (mknod: {err.strerror})"
    return None


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free right now (held together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def parse_records(text: str) -> list[dict[str, str]]:
    """``Key=Value`` records, one per line (``scontrol --oneliner``, jobcomp/filetxt).

    Values may themselves hold ``=`` (``TRES=cpu=1,mem=1G``): a key starts after whitespace.
    """
    records = []
    for line in text.splitlines():
        keys = list(re.finditer(r"(?:^|(?<=\s))([A-Za-z][\w/:.]*)=", line))
        record = {}
        for i, key in enumerate(keys):
            end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
            record[key.group(1)] = line[key.end() : end].strip()
        if record:
            records.append(record)
    return records


@dataclass
class SlurmCluster:
    """One slurmctld and a slurmd per node (``node``, or ``node1``... with several) in partition
    ``partition``, under ``root``; ``cpus``, ``mem_mb`` and ``gpus`` are per node."""

    root: Path
    cpus: int = 16
    mem_mb: int = 64000
    gpus: int = 2
    node: str = "damt-node"
    nodes: int = 1
    partition: str = "damt"
    cluster_name: str = "damt-test"
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def node_names(self) -> list[str]:
        if self.nodes == 1:
            return [self.node]
        return [f"{self.node}{i}" for i in range(1, self.nodes + 1)]

    @property
    def node_list(self) -> str:
        """The nodes as a SLURM host list."""
        return self.node if self.nodes == 1 else f"{self.node}[1-{self.nodes}]"

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        return self.root / "log" / "jobcomp.txt"

    def env(self) -> dict[str, str]:
        """Environment variables that point SLURM commands at this cluster."""
        return {
            "SLURM_CONF": str(self.conf),
            "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def run(self, *cmd: str, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        proc = subprocess.run(
            cmd, env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise SlurmCommandError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    # -- reading jobs back -------------------------------------------------------------------

    def jobs(self) -> dict[str, dict[str, str]]:
        """slurmctld's record of every job it still holds, by job id."""
        out = self.run("scontrol", "--oneliner", "show", "job")
        return {r["JobId"]: r for r in parse_records(out) if "JobId" in r}

    def batch_script(self, job_id: str) -> str:
        """The script SLURM ran for a batch job (what ``sbatch --wrap`` submitted)."""
        return self.run("scontrol", "write", "batch_script", job_id, "-")

    def completed_jobs(self) -> dict[str, dict[str, str]]:
        """The job completion log (jobcomp/filetxt), by job id."""
        if not self.jobcomp.exists():
            return {}
        return {r["JobId"]: r for r in parse_records(self.jobcomp.read_text()) if "JobId" in r}

    def logs(self) -> str:
        """Last lines of each daemon's log and output, for error messages."""
        parts = []
        for path in sorted((self.root / "log").iterdir()):
            if path.suffix not in (".log", ".out"):
                continue
            tail = path.read_text(errors="replace").splitlines()[-30:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- start and stop ----------------------------------------------------------------------

    def _write_files(self, ctld_port: int, slurmd_ports: list[int]) -> None:
        """slurm.conf, gres.conf, cgroup.conf, the fake GPU devices and the client wrappers."""
        root, host = self.root, socket.gethostname().split(".")[0]
        gpu_files = ""
        if self.gpus:
            for i in range(self.gpus):
                dev = root / "dev" / f"nvidia{i}"
                os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(NVIDIA_MAJOR, i))
            gpu_files = f"{root}/dev/nvidia[0-{self.gpus - 1}]"
        node_gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        several = self.nodes > 1  # multiple-slurmd: per-node port, spool, PID file and log
        per_node = "-%n" if several else ""
        node_lines = "\n".join(
            f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.mem_mb}{node_gres} State=UNKNOWN"
            + (f" Port={port}" if several else "")
            for name, port in zip(self.node_names, slurmd_ports, strict=True)
        )
        self.conf.write_text(
            f"""\
ClusterName={self.cluster_name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_ports[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool{per_node}
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd{per_node}.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd{per_node}.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
MinJobAge={MIN_JOB_AGE_S}
KillWait=5
SlurmdParameters=config_overrides
GresTypes=gpu
{node_lines}
PartitionName={self.partition} Nodes={self.node_list} Default=YES MaxTime=INFINITE State=UP
"""
        )
        gres = f"NodeName={self.node_list} Name=gpu File={gpu_files}\n" if self.gpus else ""
        (root / "gres.conf").write_text(f"AutoDetect=off\n{gres}")
        # slurmd 22.05 loads a cgroup plugin even with proctrack/linuxproc; without systemd a
        # cgroup v2 host needs IgnoreSystemd, and nothing is constrained.
        (root / "cgroup.conf").write_text(
            "CgroupPlugin=autodetect\nIgnoreSystemd=yes\n"
            "ConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n"
        )
        # snakemake-executor-plugin-slurm-jobstep (0.6.1) strips every SLURM_* variable but the
        # job's identity, SLURM_CONF included, before its `srun` inside the job (and before the
        # job itself, for jobs with an `mpi` resource: the multi-node pretrain job, which calls
        # `scontrol` and `srun`). A real cluster keeps slurm.conf in /etc/slurm; this one keeps
        # it here, so these commands get it back.
        for command in ("srun", "scontrol"):
            wrapper = root / "bin" / command
            wrapper.write_text(
                f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which(command)} "$@"\n'
            )
            wrapper.chmod(0o755)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = (self.root / "log" / f"{name}.out").open("w")
        self._procs[name] = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env()},
            start_new_session=True,
        )
        log.close()

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ClusterError(
                        f"{name} exited ({proc.returncode}) while waiting for {what}\n"
                        + self.logs()
                    )
            try:
                if ready():
                    return
            except (SlurmCommandError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.5)
        raise ClusterError(f"timed out waiting for {what}\n{self.logs()}")

    def start(self) -> None:
        """Write the configuration, start munged, slurmctld and slurmd, wait for an idle node."""
        for sub in ("munge", "state", "spool", "log", "run", "dev", "bin"):
            (self.root / sub).mkdir(parents=True)
        # munged insists that everyone can traverse to its socket.
        self.root.chmod(0o755)
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        ctld_port, *slurmd_ports = _free_ports(1 + self.nodes)
        self._write_files(ctld_port, slurmd_ports)

        munge = self.root / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--key-file={key}",
                f"--socket={munge / 'munge.socket'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
        )
        self._wait("munged's socket", (munge / "munge.socket").exists, timeout=20)
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: "is UP" in self.run("scontrol", "ping"))
        for name in self.node_names:
            slurmd = "slurmd" if self.nodes == 1 else f"slurmd-{name}"
            self._spawn(slurmd, ["slurmd", "-D", "-f", str(self.conf), "-N", name])
        self._wait("idle nodes", self._node_idle)
        out = self.run("scontrol", "--oneliner", "show", "node", self.node_list)
        for node in parse_records(out):
            if self.gpus and node.get("Gres") != f"gpu:{self.gpus}":
                raise ClusterError(f"node registered without its GPUs: {node}\n{self.logs()}")

    def _node_idle(self) -> bool:
        state = self.run("sinfo", "--noheader", "--nodes", self.node_list, "--format=%T").strip()
        if "drain" in state:
            reason = self.run("sinfo", "--noheader", "--nodes", self.node_list, "--format=%E")
            raise ClusterError(f"node {self.node_list} drained: {reason}\n{self.logs()}")
        return state == "idle"

    def stop(self) -> None:
        """Cancel what still runs, then stop slurmd, slurmctld and munged by PID."""
        ctld = self._procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            try:
                self.run("scancel", f"--partition={self.partition}")
                # Let slurmd end the job steps it started before it goes away.
                for _ in range(60):
                    if not self.run("squeue", "--noheader", "--states=RUNNING,COMPLETING"):
                        break
                    time.sleep(0.5)
            except (SlurmCommandError, subprocess.TimeoutExpired):
                pass
        slurmds = [name for name in self._procs if name.startswith("slurmd")]
        for name in (*slurmds, "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def running_cluster(**options) -> Iterator[SlurmCluster]:
    """A started :class:`SlurmCluster` in a fresh temp folder; stopped and removed on exit.

    The folder is made with ``tempfile`` rather than pytest's (mode 0700, deep path): munged
    wants a traversable socket folder, and a UNIX socket path must stay under 108 bytes.
    """
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="damt-slurm-")), **options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
