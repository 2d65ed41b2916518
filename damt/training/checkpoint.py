"""Training checkpoints: one :class:`Checkpoint`, written atomically and durably, read through
:func:`load_checkpoint` (safe loading, format checked, the newest readable one)."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from damt.errors import disk_full
from damt.io import atomic_path, fsync

log = logging.getLogger("damt.train")

# 2: checkpoints also hold the network they train ("network", a NetworkSpec) and the record of
# the run for the model card ("run"), so a finished run is exported from them alone.
# 3: the task balancer has a parameter group of its own (three optimizer groups, not two), its
# terms follow each task's likelihood, and location classes bin the possible crop centres: a
# format-2 run cannot continue meaningfully under this code.
CHECKPOINT_FORMAT = 3
LATEST = "checkpoint.pt"
# The checkpoint LATEST replaced: what a resume falls back to when LATEST is unreadable.
PREVIOUS = "checkpoint.prev.pt"
# A new checkpoint, complete on the disk, until it replaces LATEST.
NEXT = "checkpoint.next.pt"
# The checkpoint of the best held-out k-NN score (pretrain.keep_best).
BEST = "best.pt"


@dataclass
class Checkpoint:
    """A run after ``epoch`` epochs: everything resuming and an export-only run read (tensors and
    plain containers only, so that it loads with ``weights_only``).

    A run stopped by a signal in the middle of an epoch (damt.training.process) also saves how
    far into the next epoch it got (``partial``), so that its resume continues there and ends
    where an uninterrupted run does: ``steps`` (optimizer steps done in that epoch), ``sums``
    (the epoch meter's sums over all ranks so far), ``skipped`` (its non-finite steps),
    ``consecutive`` (non-finite steps in a row before the stop) and ``layout`` (steps per
    epoch, processes, batch size, accumulation: the split of the epoch it continues in).
    """

    epoch: int  # epochs done
    step: int  # optimizer steps done
    skipped_steps: int  # non-finite steps skipped so far
    model: dict  # the objective's state dict: network, heads, balancer, teacher, queue
    optimizer: dict
    scaler: dict
    network: dict  # the NetworkSpec trained (NetworkSpec.to_dict)
    run: dict  # the run record: how it trained, for the model card (damt.training.run.describe_run)
    eval_best: dict | None  # the best held-out k-NN score so far: epoch, metric, score
    partial: dict | None = None  # a stopped epoch's progress (see above)

    def to_state(self) -> dict:
        """The dict saved on disk (with the format number)."""
        return {
            "format": CHECKPOINT_FORMAT,
            **{f.name: getattr(self, f.name) for f in fields(self)},
        }


def save_checkpoint(folder: str | Path, checkpoint: Checkpoint, save_every: int) -> Path:
    """Write ``checkpoint`` as the latest one (the one it replaces becomes :data:`PREVIOUS`),
    and keep a copy every ``save_every`` epochs (``pretrain.save_every``).

    The new checkpoint is written whole (a temporary file, fsync, :data:`NEXT`) before it
    replaces the latest: a run killed, a node losing power or a full disk at any moment leaves a
    readable checkpoint of this or the previous epoch (:func:`load_checkpoint` finds it).
    """
    folder = Path(folder)
    latest, upcoming = folder / LATEST, folder / NEXT
    state = checkpoint.to_state()
    try:
        with atomic_path(upcoming, durable=True) as tmp:
            try:
                torch.save(state, tmp)
            except RuntimeError as exc:
                # torch's zip writer reports a short write as "unexpected pos N vs M", with no
                # errno: a full disk when the room it had (free now, plus what it wrote) is
                # less than the tensors need.
                room = shutil.disk_usage(folder).free + tmp.stat().st_size
                if room >= _tensor_bytes(state):
                    raise
                raise OSError(errno.ENOSPC, str(exc), str(upcoming)) from exc
        if latest.exists():
            os.replace(latest, folder / PREVIOUS)
        os.replace(upcoming, latest)
        fsync(folder)
        epoch = checkpoint.epoch
        # A stopped epoch's checkpoint is no epoch's: the kept copy of `epoch` is the one before.
        if save_every > 0 and epoch % save_every == 0 and checkpoint.partial is None:
            with atomic_path(folder / f"checkpoint_{epoch:04d}.pt", durable=True) as tmp:
                shutil.copyfile(latest, tmp)
    except OSError as exc:
        kept = "the checkpoints written before are kept, and the rerun resumes from the newest"
        full = disk_full(exc, folder, kept)
        if full is None:
            raise
        raise full from exc
    return latest


def _tensor_bytes(obj: object) -> int:
    """Bytes of the tensors in nested dicts and lists (what a checkpoint's file must hold)."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def keep_as_best(latest: Path) -> None:
    """Copy the latest checkpoint to :data:`BEST` beside it (atomically)."""
    with atomic_path(latest.parent / BEST, durable=True) as tmp:
        shutil.copyfile(latest, tmp)


# What reading a truncated, empty, foreign or unsafe file raises.
_UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, pickle.PickleError)


def _read(path: Path) -> Checkpoint:
    """One checkpoint file; an unreadable one raises one of ``_UNREADABLE``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path.parent} holds checkpoints of format {found}, this damt reads "
            f"format {CHECKPOINT_FORMAT}: train into a new output folder (pretrain.run_name)"
        )
    # partial: in checkpoints of stopped epochs only (and none before the format had it).
    values = {f.name: state[f.name] for f in fields(Checkpoint) if f.name != "partial"}
    return Checkpoint(**values, partial=state.get("partial"))


def load_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The newest readable checkpoint in ``folder`` (tensors on the CPU), or None when there is
    none: :data:`LATEST`, else :data:`NEXT` (a run killed between its two renames), else
    :data:`PREVIOUS`, else the kept copies, newest first.

    A file that cannot be read (cut short, empty, of another format) is skipped with a warning
    naming it and the one used instead; none is deleted. When no file is readable, the error of
    the newest is raised. ``weights_only=True``: a checkpoint holds tensors and plain containers
    only, so loading one cannot run code.
    """
    folder = Path(folder)
    kept = sorted(folder.glob("checkpoint_[0-9]*.pt"), reverse=True)
    names = (LATEST, NEXT, PREVIOUS)
    candidates = [p for p in (*(folder / n for n in names), *kept) if p.is_file()]
    errors: list[tuple[Path, Exception]] = []
    for path in candidates:
        try:
            checkpoint = _read(path)
        except _UNREADABLE as exc:
            errors.append((path, exc))
            continue
        if errors or path.name != LATEST:
            why = "; ".join(f"{p.name}: {type(e).__name__}: {str(e)[:200]}" for p, e in errors)
            log.warning(
                "%s: using %s (epoch %d): %s", folder, path.name, checkpoint.epoch,
                why or f"no {LATEST} (the run was killed while replacing it)",
            )  # fmt: skip
        return checkpoint
    if len(errors) > 1:
        log.error("no readable checkpoint in %s: %s", folder, ", ".join(p.name for p, _ in errors))
    if errors:
        raise errors[0][1]
    return None
