"""The training loop: ``run_pretraining`` is what ``damt train`` runs on every rank.

DDP over ``torchrun`` (or a single process), AdamW with a linear-scaled learning rate, cosine
schedules for learning rate and weight decay, gradient clipping, mixed precision, skipping of
non-finite steps, a checkpoint every epoch and automatic resume, metrics, and the exported
encoder at the end.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from damt.features import FEATURE_GROUPS, TASK_FEATURE_GROUPS
from damt.io import atomic_path
from damt.model.network import DAMTNetwork
from damt.model.spec import NetworkSpec
from damt.paths import ENCODER_EMA_FILE, ENCODER_FILE, MODEL_CARD_FILE, normalized_table_file
from damt.training.checkpoint import BEST, load_latest, run_lock, save_checkpoint
from damt.training.data import PretrainDataset, TrainingData, load_training_data
from damt.training.distributed import DistEnv, all_reduce, barrier, init_distributed, shutdown
from damt.training.evaluate import build_eval_set, evaluate, primary
from damt.training.export import export_encoder, write_model_card
from damt.training.metrics import MetricsLog, read_records
from damt.training.objective import PretrainObjective
from damt.training.schedules import apply_schedules, cosine_schedule, momentum_schedule
from damt.training.settings import ContrastiveSettings, EmaSettings, TrainSettings
from damt.training.signals import card_summary, epoch_signals
from damt.training.step import accumulated_step, param_groups, resolve_precision
from damt.training.views import ROTATIONS

log = logging.getLogger("damt.train")

# 2: checkpoints also hold the network they train ("network", a NetworkSpec) and the facts of
# the run for the model card ("run"), so a finished run is exported from them alone.
# 3: the task balancer has a parameter group of its own (three optimizer groups, not two), its
# terms follow each task's likelihood, and location classes bin the possible crop centres: a
# format-2 run cannot continue meaningfully under this code.
CHECKPOINT_FORMAT = 3
# The linear scaling rule of the original DAMT (and MAE, DINO): peak lr = base_lr × global
# batch / REFERENCE_BATCH.
REFERENCE_BATCH = 256


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps produced a non-finite loss or gradient."""


@dataclass
class TrainInputs:
    """Files the trainer reads (docs/contracts.md); tables of switched-off tasks may be None."""

    manifest: Path
    label_table: Path
    tables: dict[str, Path | None] = field(default_factory=dict)

    @classmethod
    def from_arguments(
        cls,
        manifest: str | Path,
        label_table: str | Path,
        tables_dir: str | Path | None,
        explicit: dict[str, str | Path | None],
    ) -> TrainInputs:
        """``damt train``'s inputs: a table given explicitly, else its file in ``tables_dir``."""
        tables: dict[str, Path | None] = {}
        for group in FEATURE_GROUPS:
            if explicit.get(group):
                tables[group] = Path(explicit[group])
            elif tables_dir:
                tables[group] = Path(tables_dir) / normalized_table_file(group)
        return cls(Path(manifest), Path(label_table), tables)

    def load(self, tasks: tuple[str, ...], subjects: int | None = None) -> TrainingData:
        """Read the manifest, the label table and the tables the switched-on tasks need;
        ``subjects``: train on that data-scaling subset (``pretrain.subjects``)."""
        needed = {
            group: task
            for task, groups in TASK_FEATURE_GROUPS.items()
            if task in tasks
            for group in groups
        }
        for group, task in needed.items():
            path = self.tables.get(group)
            if path is None or not Path(path).is_file():
                raise ValueError(
                    f"the {task} task is on but the {group} table is missing ({path}); pass it "
                    f"or switch the task off (pretrain.tasks.{task}: false)"
                )
        return load_training_data(
            self.manifest,
            self.label_table,
            {group: self.tables[group] for group in needed},
            subjects=subjects,
        )


@dataclass
class TrainResult:
    """The trained module (unwrapped) and the last epoch's metrics record."""

    objective: PretrainObjective
    last_record: dict | None


def network_spec(settings: TrainSettings, data: TrainingData) -> NetworkSpec:
    """Head sizes from the data: table widths and the label table's K."""
    return NetworkSpec(
        encoder=settings.encoder,
        tasks=settings.tasks,
        n_rotations=len(ROTATIONS),
        n_locations=settings.views.n_locations,
        contrastive_dim=settings.contrastive_dim,
        morphometry_dim=data.width("morphometry"),
        radiomics_dim=data.width("radiomics"),
        n_atlas_classes=data.n_classes,
    )


def _plain(obj: object) -> object:
    """``obj`` as JSON types (numpy scalars as numbers): checkpoints load with weights_only."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA kernels (e.g. 3-D interpolation backward) have no deterministic
        # version; a warning names them instead of stopping the run.
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


class EpochMeter:
    """Named per-epoch sums on the device, reduced over ranks in one all-reduce at the end.

    Values are accumulated as float64 tensors without host syncs. Every rank adds the same names
    with the same shapes in the same steps (a skipped step is skipped on all ranks: the skip
    decision is all-reduced), so the flattened sums line up across ranks.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        """Add ``value`` (a scalar or a tensor of fixed shape) to the sum called ``name``."""
        value = torch.as_tensor(value, device=self.device).detach().double()
        if name in self.sums:
            self.sums[name] += value
        else:
            self.sums[name] = value.clone()

    def reduce(self) -> dict[str, torch.Tensor]:
        """The sums over all ranks (CPU tensors), after one all-reduce of their concatenation."""
        names = sorted(self.sums)
        if not names:
            return {}
        flat = torch.cat([self.sums[n].reshape(-1) for n in names])
        all_reduce(flat)
        out, offset = {}, 0
        for name in names:
            size = self.sums[name].numel()
            out[name] = flat[offset : offset + size].reshape(self.sums[name].shape).cpu()
            offset += size
        return out


def _mean(sums: dict[str, torch.Tensor], total: str, count: str) -> float | None:
    # None, not NaN: metrics.jsonl stays valid JSON when a task had no valid step in an epoch.
    n = float(sums[count]) if count in sums else 0.0
    return float(sums[total]) / n if n else None


class Trainer:
    """Optimiser, schedules, precision and DDP wrapper of one run on this rank."""

    def __init__(
        self,
        settings: TrainSettings,
        objective: PretrainObjective,
        loader: DataLoader,
        env: DistEnv,
        state: dict | None,
    ) -> None:
        self.settings = settings
        self.objective, self.loader, self.env = objective, loader, env
        # Optimizer steps per epoch: the last one may accumulate fewer micro-batches.
        self.iters = math.ceil(len(loader) / settings.accumulate_steps)
        self.global_batch = settings.batch_size_per_gpu * env.world_size * settings.accumulate_steps
        self.peak_lr = settings.base_lr * self.global_batch / REFERENCE_BATCH
        self.lr = cosine_schedule(
            self.peak_lr,
            settings.min_lr,
            settings.epochs,
            self.iters,
            settings.warmup_epochs,
            settings.warmup_start_lr,
        )
        self.wd = cosine_schedule(
            settings.weight_decay, settings.weight_decay_end, settings.epochs, self.iters
        )
        # The EMA teacher's momentum per step (pretrain.ema; dino: DINO's cosine to 1).
        dino = objective.method == "dino"
        self.momentum = (
            momentum_schedule(
                settings.contrastive.dino.teacher_momentum if dino else settings.ema.momentum,
                settings.epochs,
                self.iters,
                cosine=dino,
            )
            if objective.teacher is not None
            else None
        )
        # fused: one kernel for the whole update on GPUs (bench/RESULTS.md, "GPU path").
        self.optimizer = torch.optim.AdamW(
            param_groups(objective, settings.balancer_lr),
            lr=self.peak_lr,
            fused=env.device.type == "cuda",
        )
        self.precision = resolve_precision(settings.precision, env.device)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=self.precision == "fp16")
        self.start_epoch, self.skipped_total, self.consecutive = 0, 0, 0
        if state is not None:
            self._restore(state)
        self.model: torch.nn.Module = objective
        self.ddp: DistributedDataParallel | None = None
        self.phase: tuple[str, ...] | None = None  # the tasks the wrapper was built for
        self.begin_epoch(self.start_epoch)

    def begin_epoch(self, epoch: int) -> None:
        """Select the curriculum phase of ``epoch``; wrap the module (again) when it changed."""
        active = self.settings.curriculum.active(epoch)
        if active == self.phase:
            return
        if self.settings.curriculum.phases and self.env.is_main:
            log.info("epoch %d: curriculum phase, tasks %s", epoch + 1, ",".join(active))
        self.phase = active
        self.objective.set_active(active)
        self.model, self.ddp = self.objective, None
        if self.env.world_size > 1:
            # Switched-off tasks build no head, and the frozen tasks of a curriculum phase
            # do not require gradients, so every parameter DDP registers gets a gradient at
            # every step: no find_unused_parameters (an extra graph traversal per step).
            # DDP registers the parameters that require gradients when it is built, so a phase
            # change builds a new wrapper (once per phase: a broadcast of the weights, which
            # are equal on all ranks anyway).
            self.ddp = DistributedDataParallel(
                self.objective,
                device_ids=[self.env.device.index] if self.env.device.type == "cuda" else None,
                find_unused_parameters=False,
            )
            self.model = self.ddp
        if self.settings.compile:
            # After the DDP wrapper, so DDP's optimiser splits the graph at its buckets.
            self.model = torch.compile(self.model)

    def _restore(self, state: dict) -> None:
        self.objective.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            if group["balancer"]:  # the configured rate, not the checkpoint's (no schedule sets it)
                group["lr"] = self.settings.balancer_lr
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.skipped_total = state["epoch"], state["skipped_steps"]
        if state["step"] != self.start_epoch * self.iters:
            log.warning(
                "the checkpoint's %d steps in %d epochs do not match %d steps per epoch now "
                "(subjects or batch size changed): schedules continue from step %d",
                state["step"], self.start_epoch, self.iters, self.start_epoch * self.iters,
            )  # fmt: skip

    def state(self, epochs_done: int) -> dict:
        """Everything a resumed run needs (tensors and plain containers only)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epochs_done,
            "step": epochs_done * self.iters,
            "skipped_steps": self.skipped_total,
            "model": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def _count_skipped(self, epoch: int, step: int) -> None:
        self.consecutive += 1
        if self.consecutive >= self.settings.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had a non-finite loss or "
                f"gradient (epoch {epoch + 1}, step {step}); lower the learning rate, "
                "use bf16/fp32, or check the data (pretrain.max_consecutive_nonfinite)"
            )

    def run_epoch(self, epoch: int, metrics: MetricsLog) -> dict:
        """Train one epoch; return its metrics record (means over ranks and steps)."""
        settings, env, iters = self.settings, self.env, self.iters
        tasks = self.objective.network.spec.tasks
        self.model.train()
        meter = EpochMeter(env.device)
        skipped = 0
        start = time.perf_counter()
        micro_batches = iter(self.loader)
        steps = iter(lambda: list(itertools.islice(micro_batches, settings.accumulate_steps)), [])
        progress = tqdm(
            steps,
            total=iters,
            disable=not env.is_main,
            desc=f"epoch {epoch + 1}/{settings.epochs}",
            dynamic_ncols=True,
            leave=False,
            # Sparse updates when stderr is a log file rather than a terminal.
            mininterval=0.5 if sys.stderr.isatty() else 60.0,
        )
        for it, batches in enumerate(progress):
            # ============ one optimisation step ... ============
            step = epoch * iters + it
            apply_schedules(self.optimizer, self.lr[step], self.wd[step])
            out = accumulated_step(
                self.model, self.optimizer, self.scaler, batches, self.precision,
                settings.clip_grad, self.ddp.no_sync if self.ddp is not None else None,
                env.device,
            )  # fmt: skip
            if not out.applied:
                skipped += 1
                self._count_skipped(epoch, step)
                continue
            self.consecutive = 0
            if self.momentum is not None:
                self.objective.update_teacher(float(self.momentum[step]))

            # ============ logging ... ============
            # Per task: the loss summed over the steps where it was defined, and their count
            # (tasks outside the curriculum phase have none).
            for task in out.losses:
                meter.add(f"loss/{task}", out.losses[task] * out.valid[task])
                meter.add(f"valid/{task}", out.valid[task])
            meter.add("loss", out.total)
            meter.add("grad_norm", out.grad_norm)
            meter.add("applied_steps", 1.0)
            for name, value in out.stats.items():
                meter.add(name, value)
            if env.is_main and (it % settings.log_every_steps == 0 or it == iters - 1):
                loss = float(out.total)
                # refresh=False: tqdm redraws on its own schedule, with an up-to-date count.
                progress.set_postfix(loss=f"{loss:.4g}", lr=f"{self.lr[step]:.2e}", refresh=False)
                metrics.step(
                    step,
                    {"loss": loss, "lr": float(self.lr[step]), "grad_norm": float(out.grad_norm)},
                )
        elapsed = time.perf_counter() - start
        meter.add("samples", float(len(self.loader.sampler)))
        sums = meter.reduce()
        self.skipped_total += skipped
        last = (epoch + 1) * iters - 1
        record = {
            "epoch": epoch,
            "step": last + 1,
            "loss": _mean(sums, "loss", "applied_steps"),
            "grad_norm": _mean(sums, "grad_norm", "applied_steps"),
            "lr": float(self.lr[last]),
            "weight_decay": float(self.wd[last]),
            "samples_per_s": float(sums["samples"]) / elapsed,
            "epoch_time_s": elapsed,
            "skipped_steps": skipped,
            "skipped_steps_total": self.skipped_total,
        }
        weights = self.objective.balancer.weights()
        for task in tasks:
            record[f"loss/{task}"] = _mean(sums, f"loss/{task}", f"valid/{task}")
            record[f"weight/{task}"] = weights[task]
        record |= epoch_signals(sums, tasks, self.objective.network.spec.n_rotations)
        return record


def run_pretraining(
    config: dict, inputs: TrainInputs, run_dir: str | Path, cores: int | None = None
) -> TrainResult:
    """Train (or resume) the run in ``run_dir`` on this rank; rank 0 writes every output."""
    settings = TrainSettings.from_config(config)
    use_cuda = settings.gpus > 0
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(
            f"pretrain.gpus is {settings.gpus} but no CUDA device is visible; "
            "set pretrain.gpus: 0 to train on the CPU"
        )
    _configure_determinism(settings.deterministic)
    env = init_distributed(use_cuda, settings.collective_timeout_s)
    if cores:
        torch.set_num_threads(max(1, cores // env.local_world_size))
    if not env.is_main:
        logging.getLogger("damt").setLevel(logging.WARNING)
    with run_lock(run_dir) if env.is_main else nullcontext():
        result = _train(settings, config, inputs, Path(run_dir), env)
    # Only after success: a failing rank exits instead, and torchrun stops the others.
    shutdown()
    return result


def _check_format(state: dict | None, ckpt_dir: Path) -> None:
    """Refuse checkpoints another checkpoint format wrote."""
    if state is not None and state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{ckpt_dir} holds checkpoints of format {state.get('format')}, this damt reads "
            f"format {CHECKPOINT_FORMAT}: train into a new output folder (pretrain.run_name)"
        )


def _check_resumable(state: dict, spec: NetworkSpec, settings: TrainSettings, run_dir: Path):
    """Refuse to resume a checkpoint of another network or another task balancing."""
    changed = NetworkSpec.from_dict(state["network"]).differences(spec)
    trained = state["run"]["config"]
    if trained["balancing"] != settings.balancing:
        changed.append(("balancing", trained["balancing"], settings.balancing))
    old_c, old_ema = ContrastiveSettings.from_pretrain(trained), EmaSettings.from_pretrain(trained)
    for name, old, new in (
        ("contrastive.method", old_c.method, settings.contrastive.method),
        ("contrastive.queue_size", old_c.queue_size, settings.contrastive.queue_size),
        ("contrastive.dino.out_dim", old_c.dino.out_dim, settings.contrastive.dino.out_dim),
        ("ema.enabled", old_ema.enabled, settings.ema.enabled),
    ):
        if old != new:
            changed.append((name, old, new))
    if changed:
        raise ValueError(
            f"cannot resume {run_dir}: the checkpoint was written by a run with another "
            "network ("
            + ", ".join(f"{k} {old} in the checkpoint, {new} now" for k, old, new in changed)
            + "); restore the settings and inputs it was trained with, use a new output "
            "folder, or delete its checkpoints/"
        )


def _train(
    settings: TrainSettings, config: dict, inputs: TrainInputs, run_dir: Path, env: DistEnv
) -> TrainResult:
    # ============ optionally resume training ... ============
    ckpt_dir = run_dir / "checkpoints"
    state = load_latest(ckpt_dir)
    _check_format(state, ckpt_dir)
    if state is not None and state["epoch"] >= settings.epochs:
        return _export(state, run_dir, env)

    # ============ preparing data ... ============
    data = inputs.load(settings.tasks, config["pretrain"].get("subjects"))
    spec = network_spec(settings, data)
    if state is not None:
        _check_resumable(state, spec, settings, run_dir)
    dataset = PretrainDataset(data, settings.views, settings.seed, settings.augment)
    # The sampler pads the epoch to a multiple of the world size, so every rank runs the same
    # number of steps; the last batch may be short.
    sampler = DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=settings.seed
    )
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size_per_gpu,
        sampler=sampler,
        num_workers=settings.num_workers,
        pin_memory=env.device.type == "cuda",
    )

    # ============ building the network and the optimizer ... ============
    torch.manual_seed(settings.seed)
    objective = PretrainObjective(
        DAMTNetwork(spec, settings.attention),
        settings.balancing,
        settings.contrastive_temperature,
        settings.contrastive,
        settings.ema,
    )
    objective.to(env.device)
    trainer = Trainer(settings, objective, loader, env, state)
    if state is not None:
        log.info("resuming %s after epoch %d", run_dir, trainer.start_epoch)
    # What the model card reports, kept in every checkpoint for a later export-only run (one
    # process, maybe other settings and inputs under retrain: never).
    facts = _plain(
        {
            "world_size": env.world_size,
            "nodes": env.world_size // env.local_world_size,
            "device": env.device.type,
            "precision": trainer.precision,
            "global_batch": trainer.global_batch,
            "accumulate_steps": settings.accumulate_steps,
            "peak_lr": trainer.peak_lr,
            "tasks": list(settings.tasks),
            "curriculum": settings.curriculum.to_dict(),
            "augment": list(settings.augment.enabled),
            "config": config["pretrain"],
            "data": data.summary,
        }
    )
    if env.is_main:
        log.info(
            "training %d subjects on %d %s process(es): %d steps/epoch, global batch %d "
            "(%d micro-batch(es) per step), peak lr %.3g, %s, tasks %s, %.1fM parameters",
            len(dataset), env.world_size, env.device.type, trainer.iters, trainer.global_batch,
            settings.accumulate_steps, trainer.peak_lr, trainer.precision, ",".join(settings.tasks),
            sum(p.numel() for p in objective.parameters()) / 1e6,
        )  # fmt: skip

    # ============ the held-out k-NN evaluation (pretrain.eval_every) ... ============
    eval_set = None
    if settings.eval_every:
        probe = config.get("probe") or {}
        eval_set = build_eval_set(
            inputs.manifest,
            probe.get("phenotypes"),
            probe.get("targets", []),
            settings.eval_subjects,
            spec.encoder.stride,
        )
    best = None if state is None else state.get("eval_best")

    # ============ training ... ============
    metrics = MetricsLog(
        run_dir, trainer.start_epoch, trainer.start_epoch * trainer.iters, active=env.is_main
    )
    for epoch in range(trainer.start_epoch, settings.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        trainer.begin_epoch(epoch)
        # Seeded per epoch and rank so a resumed run draws what an uninterrupted one would.
        torch.manual_seed(_seed_for(settings.seed, epoch, env.rank))
        record = trainer.run_epoch(epoch, metrics)
        improved = False
        due = (epoch + 1) % max(settings.eval_every, 1) == 0 or epoch + 1 == settings.epochs
        if eval_set is not None and due:
            encoder = objective.exported_encoder().swinViT
            record |= evaluate(encoder, eval_set, env.rank, env.world_size, settings.seed)
            score = primary(record, eval_set)
            if score is not None and (best is None or score[1] > best["score"]):
                best = {"epoch": epoch + 1, "metric": score[0], "score": score[1]}
                improved = True
            if env.is_main:
                log.info(
                    "epoch %d/%d evaluation (%.1f s): %s", epoch + 1, settings.epochs,
                    record["eval/seconds"],
                    ", ".join(f"{k[5:]} {v:.3g}" for k, v in record.items()
                              if k.startswith("eval/") and k != "eval/seconds"),
                )  # fmt: skip
        facts["eval_best"] = best if settings.keep_best else None

        # ============ writing logs and the checkpoint ... ============
        if env.is_main:
            metrics.epoch(record)
            checkpoint = {
                **trainer.state(epoch + 1),
                "network": spec.to_dict(),
                "run": facts,
                "eval_best": best,
            }
            latest = save_checkpoint(ckpt_dir, checkpoint, epoch + 1, settings.save_every)
            if improved and settings.keep_best:
                with atomic_path(ckpt_dir / BEST) as tmp:
                    shutil.copyfile(latest, tmp)
            log.info(
                "epoch %d/%d: loss %.4g, %.2f samples/s, %d skipped steps",
                epoch + 1, settings.epochs,
                math.nan if record["loss"] is None else record["loss"],
                record["samples_per_s"], record["skipped_steps"],
            )  # fmt: skip
        barrier()
    metrics.close()
    steps = settings.epochs * trainer.iters
    return _finish(run_dir, objective, facts, settings.epochs, steps, trainer.skipped_total, env)


def _export(state: dict, run_dir: Path, env: DistEnv) -> TrainResult:
    """Export a finished run from its checkpoint alone: the network it trained (not one rebuilt
    from the current tables and label table) and the facts of its training for the model card.
    """
    facts = state["run"]
    trained = facts["config"]
    objective = PretrainObjective(
        DAMTNetwork(NetworkSpec.from_dict(state["network"])),
        trained["balancing"],
        trained["contrastive_temperature"],
        ContrastiveSettings.from_pretrain(trained),
        EmaSettings.from_pretrain(trained),
    )
    objective.load_state_dict(state["model"])
    log.info(
        "%s finished its %d epochs: exporting its weights (no training)", run_dir, state["epoch"]
    )
    return _finish(
        run_dir, objective, facts, state["epoch"], state["step"], state["skipped_steps"], env
    )


def training_cost(
    records: list[dict], encoder: torch.nn.Module, world_size: int, device: str
) -> dict:
    """What the run cost, from its epoch records (every epoch, resumed ones included): encoder
    parameters, training seconds, samples per second, and device-hours (GPU-hours on ``cuda``,
    process-hours on the CPU) = seconds × processes / 3600."""
    seconds = sum(float(r.get("epoch_time_s") or 0.0) for r in records)
    samples = sum(
        float(r.get("samples_per_s") or 0.0) * float(r.get("epoch_time_s") or 0.0) for r in records
    )
    return {
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "train_seconds": seconds,
        "samples_per_s": samples / seconds if seconds > 0 else None,
        "device_hours": seconds * world_size / 3600.0,
        "device": device,
        "epochs_recorded": len(records),
    }


def _ema_momentum(objective: PretrainObjective) -> str | float:
    """The EMA's momentum as the model card states it."""
    if objective.method == "dino":
        start = objective.contrastive.dino.teacher_momentum
        return f"dino teacher: cosine {start} -> 1"
    return objective.ema.momentum


def _finish(
    run_dir: Path,
    objective: PretrainObjective,
    facts: dict,
    epochs: int,
    steps: int,
    skipped_steps: int,
    env: DistEnv,
) -> TrainResult:
    """The end of a run, trained or exported: rank 0 writes ``encoder.safetensors`` (the student,
    or dino's teacher with ``contrastive.export: teacher``), ``encoder_ema.safetensors`` with
    ``pretrain.ema``, and ``model_card.json`` (``facts``: see ``_train``) with the last epoch's
    metrics record.
    """
    records = read_records(run_dir)
    last_record = records[-1] if records else None
    if env.is_main:
        encoder = objective.exported_encoder()
        export_encoder(encoder, run_dir / ENCODER_FILE)
        ema = objective.ema_encoder()
        if ema is not None:
            export_encoder(ema, run_dir / ENCODER_EMA_FILE)
        contrastive = objective.contrastive
        write_model_card(
            run_dir / MODEL_CARD_FILE,
            encoder,
            ema_weights=ENCODER_EMA_FILE if ema is not None else None,
            pretraining={
                "epochs": epochs,
                "steps": steps,
                "world_size": facts["world_size"],
                "nodes": facts.get("nodes", 1),  # checkpoints before multi-node runs: one
                "device": facts["device"],
                "precision": facts["precision"],
                "global_batch": facts["global_batch"],
                # Checkpoints before these settings: no accumulation, curriculum, augmentation.
                "accumulate_steps": facts.get("accumulate_steps", 1),
                "peak_lr": facts["peak_lr"],
                "skipped_steps": skipped_steps,
                "tasks": facts["tasks"],
                "curriculum": facts.get("curriculum", []),
                "augment": facts.get("augment", []),
                "contrastive_method": objective.method,
                "exported_encoder": (
                    "teacher" if encoder is not objective.network.encoder else "student"
                ),
                "queue_size": contrastive.queue_size if objective.queue is not None else 0,
                "ema": (
                    {"file": ENCODER_EMA_FILE, "momentum": _ema_momentum(objective)}
                    if ema is not None
                    else None
                ),
                "config": facts["config"],
                "cost": training_cost(records, encoder, facts["world_size"], facts["device"]),
                "final_epoch": last_record,
                "learning_signals": card_summary(last_record),
                # pretrain.keep_best: the checkpoint of the best held-out k-NN score.
                "best_checkpoint": (
                    {**facts["eval_best"], "file": f"checkpoints/{BEST}"}
                    if facts.get("eval_best")
                    else None
                ),
            },
            data=facts["data"],
        )
        log.info(
            "wrote %s%s and %s",
            run_dir / ENCODER_FILE,
            f", {run_dir / ENCODER_EMA_FILE}" if ema is not None else "",
            run_dir / MODEL_CARD_FILE,
        )
    barrier()
    return TrainResult(objective, last_record)
