"""The trainer's processes: the run lock of a run folder, and trainers that die with their
launcher."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
