"""Training checkpoints: atomic writes, the latest one for resuming, safe loading."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from damt.io import atomic_path

LATEST = "checkpoint.pt"


def save_checkpoint(folder: str | Path, state: dict, epoch: int, save_every: int) -> Path:
    """Write ``state`` as the latest checkpoint, and keep a copy every ``save_every`` epochs.

    Both go through a temporary file and a rename, so a run killed while writing leaves the
    previous checkpoint intact.
    """
    folder = Path(folder)
    latest = folder / LATEST
    with atomic_path(latest) as tmp:
        torch.save(state, tmp)
    if save_every > 0 and epoch % save_every == 0:
        with atomic_path(folder / f"checkpoint_{epoch:04d}.pt") as tmp:
            shutil.copyfile(latest, tmp)
    return latest


def load_latest(folder: str | Path) -> dict | None:
    """The latest checkpoint in ``folder`` (tensors on the CPU), or None when there is none.

    ``weights_only=True``: a checkpoint holds tensors and plain containers only, so loading one
    cannot run code.
    """
    path = Path(folder) / LATEST
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


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
