"""The trainer's processes: the run lock of a run folder, trainers that die with their
launcher, and the signals that stop a run to be requeued (a cluster's preemption or time limit).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from damt.io import write_json_atomic

# What SLURM sends before it kills a job: SIGTERM on preemption, at the time limit and with
# `--signal=TERM@N` (the profile's); SIGUSR1 is the usual choice for `sbatch --signal=USR1@N` in
# scripts that run `damt train` themselves. Either one stops the run at a step boundary with a
# checkpoint (damt.training.loop), and the trainer exits with STOPPED_EXIT.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# EX_TEMPFAIL (sysexits.h): the run stopped on a stop signal with its state saved; running it
# again resumes it.
STOPPED_EXIT = 75
# Written into the run folder by rank 0 once the stopped run's checkpoint is on disk; what the
# pretrain job reads to tell a stop from a failure (torchrun reports neither exit status).
STOPPED_FILE = "stopped.json"
# Every stop of the run, one JSON record per line, kept: a requeued job's rule log starts anew.
STOPS_FILE = "stops.jsonl"


def die_with_parent() -> None:
    """Ask the kernel to kill this process (SIGKILL) when its parent dies (Linux only).

    The pretrain job's launcher starts torchrun with it, and ``damt train`` calls it first: torch
    elastic starts each trainer in a session of its own, so a ``kill -9`` of Snakemake's process
    group would otherwise leave the trainers running (and holding the run lock).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def lock_holder(run_dir: str | Path) -> str | None:
    """``"pid N on HOST"`` of the live process that holds the run lock, None when it is free.

    A lock left by a dead process is no lock (the kernel released it with the process): it is
    taken over by the next trainer.
    """
    path = Path(run_dir) / "train.lock"
    if not path.exists():
        return None
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            return fh.read().strip() or "unknown process"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on a run folder while training writes to it.

    Two trainers on one folder would interleave checkpoints and metrics (e.g. a worker left
    running after its launcher was killed, and a resumed run). The kernel releases the lock
    when the holder exits, however it exits.
    """
    path = Path(run_dir) / "train.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise RuntimeError(
                f"{run_dir} is being trained by another process ({holder}); wait for it to "
                "finish or stop it, then run again"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class StopSignal:
    """Records the first :data:`STOP_SIGNALS` signal this process receives while it is entered
    (``with StopSignal() as stop:``), so that the training loop stops at the next step boundary
    instead of dying mid-step; the handlers before it come back on exit. Outside the main thread
    (where Python cannot handle signals) it records nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None  # the signal's number
        self._before: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._before = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum


def ignore_stop_signals() -> None:
    """Ignore the stop signals in this process and in what it execs (torchrun, a data-loader
    worker), and unblock them (:func:`stop_signals_blocked`): the trainer alone decides when to
    stop, and its launcher waits for it."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold the stop signals back while processes are forked (a data loader's workers): a
    forked worker starts with them blocked until its ``worker_init_fn`` ignores them (torch's
    worker loop first installs a SIGTERM handler that ends the worker), and one that arrives
    meanwhile reaches the trainer when the block ends."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``, read from /proc (Linux; empty elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def write_stopped(run_dir: str | Path, record: dict) -> None:
    """Say in the run folder that the run stopped on a signal with its state saved."""
    write_json_atomic(Path(run_dir) / STOPPED_FILE, record)


def take_stopped(run_dir: str | Path, **facts: object) -> dict | None:
    """The record :func:`write_stopped` left in ``run_dir``, with ``facts`` added, moved to the
    run's :data:`STOPS_FILE`; None when there is none."""
    path = Path(run_dir) / STOPPED_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # cut short: still a stop
        record = {}
    record = {**record, **facts}
    with open(Path(run_dir) / STOPS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    path.unlink()
    return record


def read_stops(run_dir: str | Path) -> list[dict]:
    """The stops of the run in ``run_dir``, oldest first (lines that are no record skipped)."""
    path = Path(run_dir) / STOPS_FILE
    if not path.exists():
        return []
    stops = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            stops.append(json.loads(line))
        except ValueError:
            continue
    return [stop for stop in stops if isinstance(stop, dict)]
