"""The run signature (what a trained model depends on) and the retrain policy that compares it
with a run folder's (see :mod:`damt.training.launch`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from damt.config import schema_defaults
from damt.io import HASH_CHARS, sha256_file, stable_hash
from damt.manifest import trains
from damt.split import scaling_subset
from damt.training.launch.checks import LaunchError
from damt.training.process import STOPS_FILE
from damt.training.settings import TrainSettings

log = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"


class Action(StrEnum):
    """What a pretrain job does with its run folder (the log's "pretrain plan: ...")."""

    TRAIN = "train"
    RESUME = "resume"
    EXPORT = "export"


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


@dataclass(frozen=True)
class Plan:
    """What the job will do, and why (logged)."""

    action: Action
    reason: str
    supersede: bool = False  # move the existing checkpoints aside first
    # Write the current signature. Not when a kept run was trained on other inputs: its
    # signature still says on which (so a later retrain: cohort sees the difference).
    sign: bool = True


def training_subjects(manifest: str | Path, size: int | None = None) -> list[str]:
    """Subjects the trainer uses: status pass/warn with a training cache, not held out (sorted);
    of those, the data-scaling subset of ``size`` (``pretrain.subset_size``)."""
    wanted = ["subject_id", "status", "has_cache", "split"]
    frame = pd.read_parquet(
        manifest, columns=[c for c in wanted if c in pq.read_schema(manifest).names]
    )
    return scaling_subset(frame.loc[trains(frame), "subject_id"].astype(str), size)


# The `pretrain` keys of the first signed runs, which enter a signature whatever their value.
# A key added since enters only where its value differs from the schema's default (in the form
# of _SIGNED_FORM): what every run was before the key existed, so that an upgrade neither
# retrains finished runs nor restarts interrupted ones.
SIGNED_SINCE_THE_START = frozenset(
    {
        "preset", "presets", "epochs", "warmup_epochs", "warmup_start_lr", "min_lr",
        "batch_size_per_gpu", "base_lr", "weight_decay", "weight_decay_end", "clip_grad",
        "drop_path_rate", "balancing", "balancer_lr", "location_axes", "location_grid",
        "mim_mask_ratio", "contrastive_dim", "contrastive_temperature", "tasks", "gpus",
        "cpu_processes", "seed", "deterministic", "precision",
    }
)  # fmt: skip
# Keys signed under the name they first had (pretrain.subjects, now subset_size).
_SIGNED_NAME = {"subset_size": "subjects"}


def _used_augmentations(augment: dict, pretrain: dict) -> dict:
    """The augmentations switched on (a probability of 0 shapes nothing)."""
    return {k: v for k, v in augment.items() if v.get("prob", 0) > 0}


def _preset_in_use(presets: dict, pretrain: dict) -> dict:
    """Of ``presets`` only the one in use, without ``checkpointing``: gradient checkpointing
    trades memory for time, the network and its steps are the same."""
    preset = pretrain["preset"]
    return {preset: {k: v for k, v in presets[preset].items() if k != "checkpointing"}}


def _contrastive_in_use(section: dict, pretrain: dict) -> dict | None:
    """None for NT-Xent without a queue through the linear head (the original), else the
    method, its own settings, for dino what is exported, and a projector other than the
    linear one (the only one before it could be chosen)."""
    method = section["method"]
    if method == "ntxent":
        queue = section["queue_size"]
        kept = {"method": method, "queue_size": queue} if queue else {}
    else:
        kept = {"method": method, method: section[method]}
    if method == "dino":
        kept["export"] = section["export"]
    if section["projector"] != "linear":
        kept["projector"] = section["projector"]
    return kept or None


def _ema_in_use(ema: dict, pretrain: dict) -> dict | None:
    """The EMA settings of an EMA that runs (None when it is off)."""
    return ema if ema["enabled"] else None


# What of a key's value a trained model depends on (the value itself for the others).
_SIGNED_FORM = {
    "augment": _used_augmentations,
    "presets": _preset_in_use,
    "contrastive": _contrastive_in_use,
    "ema": _ema_in_use,
}


def model_settings(pretrain: Mapping) -> dict:
    """The ``pretrain`` settings a trained model depends on: every key but
    ``OPERATIONAL_KEYS``, in its signed form; a key added since the first signed runs only where
    it differs from the schema's default (``pretrain`` is validated: it holds every key; a
    run's :attr:`TrainSettings.section`)."""
    defaults = schema_defaults("pretrain")
    settings = {}
    for key, value in pretrain.items():
        if key in OPERATIONAL_KEYS:
            continue
        form = _SIGNED_FORM.get(key)
        signed = form(value, pretrain) if form else value
        if key in SIGNED_SINCE_THE_START or signed != (
            form(defaults[key], defaults) if form else defaults[key]
        ):
            settings[_SIGNED_NAME.get(key, key)] = signed
    return settings


def signature(
    settings: TrainSettings,
    manifest: str | Path,
    label_table: str | Path,
    tables: dict[str, Path | None],
) -> dict:
    """What a trained model depends on, beyond feature values: the training subjects, the
    model settings (:func:`model_settings`), the feature tables' columns and the label table."""
    subjects = training_subjects(manifest, settings.subset_size)
    columns = {
        name: pq.read_schema(path).names
        for name, path in sorted(tables.items())
        if path is not None and Path(path).is_file()
    }
    return {
        "subjects": hashlib.sha256("\n".join(subjects).encode()).hexdigest()[:HASH_CHARS],
        "n_subjects": len(subjects),
        "pretrain": stable_hash(model_settings(settings.section)),
        "feature_columns": stable_hash(columns),
        "label_table": sha256_file(label_table)[:HASH_CHARS],
    }


def _epochs_done(run_dir: Path) -> int | None:
    """Epochs of the latest checkpoint; None when there is none."""
    from damt.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run_dir / "checkpoints")
    return None if checkpoint is None else int(checkpoint.epoch)


def previous_signature(run_dir: Path) -> dict | None:
    """The run's ``signature.json``, or None when it is missing or unreadable."""
    try:
        previous = json.loads((run_dir / SIGNATURE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return previous if isinstance(previous, dict) else None


def plan_pretraining(run_dir: Path, current: dict, policy: str, epochs: int) -> Plan:
    """Decide what to do with the run folder (pure apart from reading its files)."""
    done = _epochs_done(run_dir)
    if done is None:
        return Plan(Action.TRAIN, "no checkpoint yet")
    finished = done >= epochs
    previous = previous_signature(run_dir)
    changed = sorted(k for k in current if previous is None or previous.get(k) != current[k])
    changed = [k for k in changed if k != "n_subjects"]
    what = ", ".join(changed) if changed else "nothing"
    if not finished:
        if changed and policy != "never":
            return Plan(
                Action.TRAIN,
                f"interrupted run trained on other inputs ({what} changed)",
                supersede=True,
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
        return Plan(Action.RESUME, "interrupted run: resuming from its latest checkpoint")
    if policy == "never":
        return Plan(
            Action.EXPORT, f"finished run kept (retrain: never; {what} changed)", sign=not changed
        )
    if policy == "always":
        return Plan(Action.TRAIN, "finished run trained again (retrain: always)", supersede=True)
    if changed:
        return Plan(Action.TRAIN, f"{what} changed (retrain: cohort)", supersede=True)
    return Plan(
        Action.EXPORT, "same training subjects and settings: finished run kept (retrain: cohort)"
    )


def supersede(run_dir: Path) -> Path:
    """Move the run's checkpoints, metrics, TensorBoard files and stops to
    ``superseded/<time>/``."""
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    target = run_dir / "superseded" / stamp
    target.mkdir(parents=True)
    for name in ("checkpoints", "metrics.jsonl", "tb", STOPS_FILE, SIGNATURE_FILE):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), target / name)
    log.info("moved the previous run's checkpoints and metrics to %s", target)
    return target
