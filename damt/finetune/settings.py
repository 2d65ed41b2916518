"""Fine-tuning's vocabulary: its tasks, the two initialisations, one unit of work, its settings
and its error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from damt.probe.settings import METRICS

SEGMENTATION = "segmentation"
# The two starting points compared: the run's encoder, and the same network at random.
PRETRAINED, SCRATCH = "pretrained", "scratch"
INITS = (PRETRAINED, SCRATCH)
# A labelled count of `all`: every labelled training subject of the task.
ALL = "all"
MEAN_DICE = "mean_dice"
# The metrics of a task kind.
TASK_METRICS = {**METRICS, SEGMENTATION: (MEAN_DICE,)}


class FinetuneError(ValueError):
    """A task (or the whole job) cannot run on the data given; the message names why."""


@dataclass(frozen=True)
class Task:
    """One labelled task: a phenotype column (regression or classification), or the
    segmentation of ``labels`` (FreeSurfer label ids) named ``name``."""

    name: str
    kind: str
    labels: tuple[int, ...] = ()


@dataclass(frozen=True)
class Unit:
    """One fine-tuning: a task from an initialisation on ``count`` labelled subjects (``all``
    or a number), with ``seed`` (its subset, head, crops and order)."""

    task: str
    init: str
    count: int | str
    seed: int

    @property
    def name(self) -> str:
        """Its file name under ``units/`` (without the suffix)."""
        return f"{self.task}-{self.init}-n{self.count}-s{self.seed}"


@dataclass(frozen=True)
class FinetuneSettings:
    """The config's ``finetune`` section (defaults in the schema)."""

    tasks: tuple[Task, ...]
    counts: tuple[int | str, ...]
    seeds: tuple[int, ...]
    epochs: int
    patience: int
    batch_size: int
    lr: float
    encoder_lr_factor: float
    layer_decay: float
    weight_decay: float
    freeze_encoder: bool
    validation_fraction: float
    downsample: int
    crop: int
    crops_per_subject: int
    overlap: float
    bootstrap: int
    gpus: int
    threads: int

    @classmethod
    def from_config(cls, finetune: Mapping) -> FinetuneSettings:
        """From the config's ``finetune`` section."""
        tasks = [Task(t["name"], t["type"]) for t in finetune["targets"]]
        seg = finetune["segmentation"]
        if seg["enabled"]:
            tasks.append(Task(seg["name"], SEGMENTATION, tuple(int(x) for x in seg["labels"])))
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise FinetuneError(f"finetune: task names must differ, got {names}")
        numbers = sorted(c for c in finetune["counts"] if c != ALL)
        counts = (*numbers, ALL) if ALL in finetune["counts"] else tuple(numbers)
        return cls(
            tasks=tuple(tasks),
            counts=counts,
            seeds=tuple(int(s) for s in finetune["seeds"]),
            epochs=finetune["epochs"],
            patience=finetune["patience"],
            batch_size=finetune["batch_size"],
            lr=float(finetune["lr"]),
            encoder_lr_factor=float(finetune["encoder_lr_factor"]),
            layer_decay=float(finetune["layer_decay"]),
            weight_decay=float(finetune["weight_decay"]),
            freeze_encoder=bool(finetune["freeze_encoder"]),
            validation_fraction=float(finetune["validation_fraction"]),
            downsample=finetune["downsample"],
            crop=finetune["crop"],
            crops_per_subject=finetune["crops_per_subject"],
            overlap=float(finetune["overlap"]),
            bootstrap=finetune["bootstrap"],
            gpus=finetune["gpus"],
            threads=finetune["threads"],
        )

    def training_fields(self) -> dict:
        """The settings that change what a unit learns (its resume key holds them)."""
        out = asdict(self)
        for key in ("tasks", "counts", "seeds", "bootstrap", "gpus", "threads"):
            out.pop(key)
        return out
