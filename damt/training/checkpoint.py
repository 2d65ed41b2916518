"""Training checkpoints: one :class:`Checkpoint`, written atomically, read through
:func:`load_checkpoint` (safe loading, format checked)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from damt.io import atomic_path

# 2: checkpoints also hold the network they train ("network", a NetworkSpec) and the facts of
# the run for the model card ("run"), so a finished run is exported from them alone.
# 3: the task balancer has a parameter group of its own (three optimizer groups, not two), its
# terms follow each task's likelihood, and location classes bin the possible crop centres: a
# format-2 run cannot continue meaningfully under this code.
CHECKPOINT_FORMAT = 3
LATEST = "checkpoint.pt"
# The checkpoint of the best held-out k-NN score (pretrain.keep_best).
BEST = "best.pt"


@dataclass
class Checkpoint:
    """A run after ``epoch`` epochs: everything resuming and an export-only run read (tensors and
    plain containers only, so that it loads with ``weights_only``)."""

    epoch: int  # epochs done
    step: int  # optimizer steps done
    skipped_steps: int  # non-finite steps skipped so far
    model: dict  # the objective's state dict: network, heads, balancer, teacher, queue
    optimizer: dict
    scaler: dict
    network: dict  # the NetworkSpec trained (NetworkSpec.to_dict)
    run: dict  # the run's facts for the model card (damt.training.run.run_facts)
    eval_best: dict | None  # the best held-out k-NN score so far: epoch, metric, score

    def to_state(self) -> dict:
        """The dict saved on disk (with the format number)."""
        return {
            "format": CHECKPOINT_FORMAT,
            **{f.name: getattr(self, f.name) for f in fields(self)},
        }


def save_checkpoint(folder: str | Path, checkpoint: Checkpoint, save_every: int) -> Path:
    """Write ``checkpoint`` as the latest one, and keep a copy every ``save_every`` epochs.

    Both go through a temporary file and a rename, so a run killed while writing leaves the
    previous checkpoint intact.
    """
    folder = Path(folder)
    latest = folder / LATEST
    with atomic_path(latest) as tmp:
        torch.save(checkpoint.to_state(), tmp)
    epoch = checkpoint.epoch
    if save_every > 0 and epoch % save_every == 0:
        with atomic_path(folder / f"checkpoint_{epoch:04d}.pt") as tmp:
            shutil.copyfile(latest, tmp)
    return latest


def keep_as_best(latest: Path) -> None:
    """Copy the latest checkpoint to :data:`BEST` beside it (atomically)."""
    with atomic_path(latest.parent / BEST) as tmp:
        shutil.copyfile(latest, tmp)


def load_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The latest checkpoint in ``folder`` (tensors on the CPU), or None when there is none.

    ``weights_only=True``: a checkpoint holds tensors and plain containers only, so loading one
    cannot run code. A checkpoint of another format is refused (ValueError).
    """
    path = Path(folder) / LATEST
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{folder} holds checkpoints of format {state.get('format')}, this damt reads "
            f"format {CHECKPOINT_FORMAT}: train into a new output folder (pretrain.run_name)"
        )
    return Checkpoint(**{f.name: state[f.name] for f in fields(Checkpoint)})
