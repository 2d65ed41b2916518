"""Typed view of the validated ``pretrain`` config section."""

from __future__ import annotations

from dataclasses import dataclass

from damt.model.spec import (
    TASKS,
    EncoderSpec,
    ViewSpec,
    encoder_spec_from_config,
    view_spec_from_config,
)
from damt.training.augment import AugmentSpec
from damt.training.curriculum import Curriculum


@dataclass(frozen=True)
class TrainSettings:
    """Everything the trainer reads from ``config["pretrain"]`` (see config.schema.yaml)."""

    encoder: EncoderSpec
    views: ViewSpec
    tasks: tuple[str, ...]
    attention: str
    compile: bool
    balancing: str
    balancer_lr: float
    contrastive_temperature: float
    contrastive_dim: int
    epochs: int
    batch_size_per_gpu: int
    base_lr: float
    min_lr: float
    warmup_epochs: int
    warmup_start_lr: float
    weight_decay: float
    weight_decay_end: float
    clip_grad: float
    precision: str
    num_workers: int
    seed: int
    deterministic: bool
    save_every: int
    max_consecutive_nonfinite: int
    log_every_steps: int
    gpus: int
    eval_every: int
    eval_subjects: int
    keep_best: bool
    nodes: int
    collective_timeout_s: int
    accumulate_steps: int
    curriculum: Curriculum
    augment: AugmentSpec

    @classmethod
    def from_config(cls, config: dict) -> TrainSettings:
        """Build from the whole validated workflow config; checks cross-key constraints."""
        p = config["pretrain"]
        tasks = tuple(t for t in TASKS if p["tasks"][t])
        if not tasks:
            raise ValueError("pretrain.tasks: every task is switched off")
        settings = cls(
            encoder=encoder_spec_from_config(p),
            views=view_spec_from_config(p),
            tasks=tasks,
            attention=p["attention"],
            compile=p["compile"],
            balancing=p["balancing"],
            balancer_lr=p["balancer_lr"],
            contrastive_temperature=p["contrastive_temperature"],
            contrastive_dim=p["contrastive_dim"],
            epochs=p["epochs"],
            batch_size_per_gpu=p["batch_size_per_gpu"],
            base_lr=p["base_lr"],
            min_lr=p["min_lr"],
            warmup_epochs=p["warmup_epochs"],
            warmup_start_lr=p["warmup_start_lr"],
            weight_decay=p["weight_decay"],
            weight_decay_end=p["weight_decay_end"],
            clip_grad=p["clip_grad"],
            precision=p["precision"],
            num_workers=p["num_workers"],
            seed=p["seed"],
            deterministic=p["deterministic"],
            save_every=p["save_every"],
            max_consecutive_nonfinite=p["max_consecutive_nonfinite"],
            log_every_steps=p["log_every_steps"],
            gpus=p["gpus"],
            eval_every=p["eval_every"],
            eval_subjects=p["eval_subjects"],
            keep_best=p["keep_best"],
            nodes=p["nodes"],
            collective_timeout_s=p["collective_timeout_s"],
            accumulate_steps=p["accumulate_steps"],
            curriculum=Curriculum.from_config(p["curriculum"], tasks, p["epochs"]),
            augment=AugmentSpec.from_config(p["augment"]),
        )
        if settings.warmup_epochs >= settings.epochs:
            raise ValueError(
                f"pretrain.warmup_epochs ({settings.warmup_epochs}) must be smaller than "
                f"pretrain.epochs ({settings.epochs})"
            )
        settings.views.check(settings.encoder, atlas_task="atlas" in tasks)
        return settings
