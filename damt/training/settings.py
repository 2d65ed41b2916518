"""The validated ``pretrain`` config section, parsed once: what the launcher, the run signature
and the trainer read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from damt.model.spec import (
    TASKS,
    EncoderSpec,
    ViewSpec,
    encoder_spec_from_config,
    view_spec_from_config,
)
from damt.training.curriculum import Curriculum

# The transforms in the order they run; each is one key of pretrain.augment.
AUGMENTATIONS = ("elastic", "bias_field", "contrast", "noise")


def _range(name: str, values, low: float | None = None, positive: bool = False) -> tuple:
    lo, hi = (float(v) for v in values)
    if lo > hi:
        raise ValueError(f"pretrain.augment.{name}: [{lo}, {hi}] is not a range (low > high)")
    if low is not None and lo < low:
        raise ValueError(f"pretrain.augment.{name}: {lo} is below {low}")
    if positive and lo <= 0:
        raise ValueError(f"pretrain.augment.{name}: values must be positive, got {lo}")
    return lo, hi


@dataclass(frozen=True)
class AugmentSpec:
    """Probabilities and ranges of ``pretrain.augment`` (all probabilities 0: no augmentation)."""

    elastic_prob: float
    elastic_sigma: tuple[float, float]
    elastic_magnitude: tuple[float, float]
    bias_field_prob: float
    bias_field_degree: int
    bias_field_coeff: tuple[float, float]
    contrast_prob: float
    contrast_gamma: tuple[float, float]
    noise_prob: float
    noise_std: float

    @classmethod
    def from_config(cls, augment: dict) -> AugmentSpec:
        """Check the ranges of ``pretrain.augment`` (the schema has checked types and
        probabilities); errors name the key."""
        e, b, c, n = (augment[k] for k in AUGMENTATIONS)
        return cls(
            elastic_prob=e["prob"],
            elastic_sigma=_range("elastic.sigma", e["sigma"], positive=True),
            elastic_magnitude=_range("elastic.magnitude", e["magnitude"], low=0.0),
            bias_field_prob=b["prob"],
            bias_field_degree=b["degree"],
            bias_field_coeff=_range("bias_field.coeff", b["coeff"]),
            contrast_prob=c["prob"],
            contrast_gamma=_range("contrast.gamma", c["gamma"], positive=True),
            noise_prob=n["prob"],
            noise_std=n["std"],
        )

    @property
    def enabled(self) -> tuple[str, ...]:
        """The augmentations with a probability above 0."""
        return tuple(a for a in AUGMENTATIONS if getattr(self, f"{a}_prob") > 0)


@dataclass(frozen=True)
class VICRegSettings:
    """VICReg's coefficients (Bardes et al. 2022, the paper's defaults): λ invariance, μ
    variance, ν covariance; the variance hinge's target γ and the ε under its square root."""

    invariance: float
    variance: float
    covariance: float
    variance_target: float
    eps: float


@dataclass(frozen=True)
class DINOSettings:
    """DINO's self-distillation (Caron et al. 2021): prototypes, temperatures, centre and teacher
    momentum (the paper's defaults except ``out_dim``, 65536 there)."""

    out_dim: int
    teacher_temperature: float
    student_temperature: float
    center_momentum: float
    teacher_momentum: float  # start of the cosine schedule to 1


@dataclass(frozen=True)
class ContrastiveSettings:
    """``pretrain.contrastive``: which loss the contrastive task uses and its settings."""

    method: str
    projector: str
    queue_size: int
    export: str
    vicreg: VICRegSettings
    dino: DINOSettings

    @classmethod
    def from_pretrain(cls, pretrain: dict) -> ContrastiveSettings:
        """From a validated ``pretrain`` section (a checkpoint's: through
        :func:`damt.config.with_schema_defaults`)."""
        c = pretrain["contrastive"]
        return cls(
            method=c["method"],
            projector=c["projector"],
            queue_size=c["queue_size"],
            export=c["export"],
            vicreg=VICRegSettings(**c["vicreg"]),
            dino=DINOSettings(**c["dino"]),
        )


@dataclass(frozen=True)
class EmaSettings:
    """``pretrain.ema``: an exponential moving average of the encoder, exported as well."""

    enabled: bool
    momentum: float

    @classmethod
    def from_pretrain(cls, pretrain: dict) -> EmaSettings:
        """From a validated ``pretrain`` section."""
        return cls(**pretrain["ema"])


@dataclass(frozen=True)
class TrainSettings:
    """The ``pretrain`` section (see config.schema.yaml), parsed and cross-checked once.

    ``section`` is the validated section as given, read-only: the run signature is defined on
    its keys (:func:`damt.training.launch.signature.model_settings`), and the run's config file
    and model card record it.
    """

    encoder: EncoderSpec
    views: ViewSpec
    tasks: tuple[str, ...]
    attention: str
    compile: bool
    balancing: str
    balancer_lr: float
    contrastive_temperature: float
    contrastive_dim: int
    contrastive: ContrastiveSettings
    ema: EmaSettings
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
    cpu_processes: int
    threads: int
    retrain: str
    subset_size: int | None
    section: Mapping = field(repr=False, compare=False)

    @property
    def processes_per_node(self) -> int:
        """Training processes on each node: one per GPU, or ``cpu_processes`` on CPUs."""
        return self.gpus if self.gpus > 0 else self.cpu_processes

    @classmethod
    def from_config(cls, config: Mapping) -> TrainSettings:
        """From the whole validated workflow config (see :meth:`from_section`)."""
        return cls.from_section(config["pretrain"])

    @classmethod
    def from_section(cls, p: Mapping) -> TrainSettings:
        """From a validated ``pretrain`` section; checks the cross-key constraints (errors
        name the key)."""
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
            contrastive=ContrastiveSettings.from_pretrain(p),
            ema=EmaSettings.from_pretrain(p),
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
            cpu_processes=p["cpu_processes"],
            threads=p["threads"],
            retrain=p["retrain"],
            subset_size=p["subset_size"],
            section=MappingProxyType(dict(p)),
        )
        if settings.warmup_epochs >= settings.epochs:
            raise ValueError(
                f"pretrain.warmup_epochs ({settings.warmup_epochs}) must be smaller than "
                f"pretrain.epochs ({settings.epochs})"
            )
        settings.views.check(settings.encoder, atlas_task="atlas" in tasks)
        check_contrastive(settings.contrastive, "contrastive" in tasks)
        return settings


def check_contrastive(c: ContrastiveSettings, task_on: bool) -> None:
    """Refuse combinations of ``pretrain.contrastive`` that cannot train as configured."""
    if c.method != "ntxent" and not task_on:
        raise ValueError(
            f"pretrain.contrastive.method is {c.method} but the contrastive task is off "
            "(pretrain.tasks.contrastive: false); switch the task on or use method ntxent"
        )
    if c.queue_size and not task_on:
        raise ValueError(
            f"pretrain.contrastive.queue_size is {c.queue_size} but the contrastive task is off "
            "(pretrain.tasks.contrastive: false); switch the task on or set queue_size: 0"
        )
    if c.queue_size and c.method != "ntxent":
        raise ValueError(
            f"pretrain.contrastive.queue_size ({c.queue_size}) is a queue of NT-Xent negatives, "
            f"but the method is {c.method}, which uses no negatives; set queue_size: 0"
        )
    if c.export == "teacher" and c.method != "dino":
        raise ValueError(
            f"pretrain.contrastive.export is teacher but method {c.method} has no teacher (only "
            "dino does); use export: student (pretrain.ema exports an EMA encoder beside it)"
        )
