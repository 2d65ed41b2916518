"""The training loop: a :class:`Trainer` runs epochs (``run_epoch``) and fits a run over its
epochs (``fit``: train, evaluate, log and checkpoint each epoch).

DDP over ``torchrun`` (or a single process), AdamW with a linear-scaled learning rate, cosine
schedules for learning rate and weight decay, gradient clipping, mixed precision, skipping of
non-finite steps, and a checkpoint every epoch. A stop signal (a cluster's preemption or time
limit, :mod:`damt.training.process`) stops the run at the next step boundary with a checkpoint
of the partial epoch, from which the resume ends where an uninterrupted run does. The run around
it (resume, data, network, export) is :mod:`damt.training.run`.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from damt.training.checkpoint import Checkpoint, keep_as_best, save_checkpoint
from damt.training.distributed import DistEnv, barrier
from damt.training.evaluate import EvalSet, evaluate, primary
from damt.training.heldout import held_out_signals
from damt.training.meter import EpochMeter, agreed_stop, mean_of
from damt.training.metrics import MetricsLog
from damt.training.objective import PretrainObjective
from damt.training.process import StopSignal, stop_signals_blocked, write_stopped
from damt.training.schedules import apply_schedules, cosine_schedule, momentum_schedule
from damt.training.settings import TrainSettings
from damt.training.signals import epoch_signals
from damt.training.step import accumulated_step, param_groups, resolve_precision

log = logging.getLogger("damt.train")

# The linear scaling rule of the original DAMT (and MAE, DINO): peak lr = base_lr × global
# batch / REFERENCE_BATCH.
REFERENCE_BATCH = 256


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps produced a non-finite loss or gradient."""


class TrainingStopped(Exception):
    """The run stopped on a stop signal with its state in the latest checkpoint."""

    def __init__(self, signal_name: str, epoch: int, steps: int, iters: int) -> None:
        super().__init__(
            f"stopped by {signal_name} after step {steps} of {iters} in epoch {epoch + 1}"
        )
        self.signal_name, self.epoch, self.steps = signal_name, epoch, steps


class _EpochStopped(Exception):
    """Raised out of :meth:`Trainer.run_epoch` at the step boundary where the run stops."""

    def __init__(self, signal_name: str, partial: dict) -> None:
        super().__init__(signal_name)
        self.signal_name, self.partial = signal_name, partial


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _signals_line(signals: dict[str, float | None]) -> str:
    """``name value (chance c)`` of each held-out signal that has a value."""
    return ", ".join(
        f"{key.removeprefix('eval_signal/')} {value:.3g} "
        f"(chance {signals[key.replace('signal/', 'chance/')]:.3g})"
        for key, value in signals.items()
        if key.startswith("eval_signal/") and value is not None
    )


def _add_step(meter: EpochMeter, out) -> None:
    """Add an applied step's losses and statistics to the epoch's sums. Per task: the loss
    summed over the steps where it was defined, and their count (tasks outside the curriculum
    phase have none)."""
    for task in out.losses:
        meter.add(f"loss/{task}", out.losses[task] * out.valid[task])
        meter.add(f"valid/{task}", out.valid[task])
    meter.add("loss", out.total)
    meter.add("grad_norm", out.grad_norm)
    meter.add("applied_steps", 1.0)
    for name, value in out.stats.items():
        meter.add(name, value)


class Trainer:
    """Optimiser, schedules, precision and DDP wrapper of one run on this rank."""

    def __init__(
        self,
        settings: TrainSettings,
        objective: PretrainObjective,
        loader: DataLoader,
        env: DistEnv,
        checkpoint: Checkpoint | None,
        stop: StopSignal | None = None,
    ) -> None:
        self.settings = settings
        self.objective, self.loader, self.env, self.stop = objective, loader, env, stop
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
        self.resumed: dict | None = None  # the partial epoch start_epoch continues
        if checkpoint is not None:
            self._restore(checkpoint)
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

    def _restore(self, checkpoint: Checkpoint) -> None:
        self.objective.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        for group in self.optimizer.param_groups:
            if group["balancer"]:  # the configured rate, not the checkpoint's (no schedule sets it)
                group["lr"] = self.settings.balancer_lr
        self.scaler.load_state_dict(checkpoint.scaler)
        self.start_epoch, self.skipped_total = checkpoint.epoch, checkpoint.skipped_steps
        self.resumed = checkpoint.partial
        within = checkpoint.partial["steps"] if checkpoint.partial else 0
        if checkpoint.partial is not None and checkpoint.partial["layout"] != self._layout():
            self.resumed = None  # another split of the epoch: continuing inside it means nothing
            log.warning(
                "the checkpoint stopped after step %d of epoch %d with another split of the "
                "epoch (steps, processes, batch size, accumulation %s, now %s): epoch %d "
                "starts again from its first step",
                within, self.start_epoch + 1, checkpoint.partial["layout"], self._layout(),
                self.start_epoch + 1,
            )  # fmt: skip
        elif checkpoint.step != self.start_epoch * self.iters + within:
            self.resumed = None
            log.warning(
                "the checkpoint's %d steps in %d epochs do not match %d steps per epoch now "
                "(subjects or batch size changed): schedules continue from step %d, at the "
                "start of epoch %d",
                checkpoint.step, self.start_epoch, self.iters, self.start_epoch * self.iters,
                self.start_epoch + 1,
            )  # fmt: skip

    def checkpoint(
        self,
        epochs_done: int,
        network: dict,
        run: dict,
        eval_best: dict | None,
        partial: dict | None = None,
    ) -> Checkpoint:
        """This rank's state after ``epochs_done`` epochs (and ``partial``'s steps of the next),
        with the run record."""
        return Checkpoint(
            epoch=epochs_done,
            step=epochs_done * self.iters + (partial["steps"] if partial else 0),
            skipped_steps=self.skipped_total,
            model=self.objective.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            network=network,
            run=run,
            eval_best=eval_best,
            partial=partial,
        )

    def _layout(self) -> list[int]:
        """How an epoch is split into steps: a partial epoch continues only under the same."""
        settings = self.settings
        return [
            self.iters, self.env.world_size, settings.batch_size_per_gpu,
            settings.accumulate_steps,
        ]  # fmt: skip

    def _stop_signal(self) -> str | None:
        return None if self.stop is None else agreed_stop(self.stop.received, self.env)

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
        self.model.train()
        meter = EpochMeter(env.device)
        skipped, first = 0, 0
        if self.resumed is not None and epoch == self.start_epoch:
            first, skipped = self.resumed["steps"], self.resumed["skipped"]
            self.consecutive = self.resumed["consecutive"]
            meter.resume(self.resumed["sums"], keep=env.is_main)
        start = time.perf_counter()
        progress = self._steps(epoch, first)
        for it, batches in enumerate(progress, start=first):
            stop = self._stop_signal()
            if stop is not None:
                progress.close()
                partial = {
                    "steps": it, "sums": meter.reduce(), "skipped": skipped,
                    "consecutive": self.consecutive, "layout": self._layout(),
                }  # fmt: skip
                raise _EpochStopped(stop, partial)
            # ============ one optimisation step ... ============
            step = epoch * iters + it
            # Seeded per step and rank, so a run resumed in any step draws what an
            # uninterrupted one would (drop path, attention dropout).
            torch.manual_seed(_seed_for(settings.seed, epoch, env.rank, it))
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
            _add_step(meter, out)
            if env.is_main and (it % settings.log_every_steps == 0 or it == iters - 1):
                loss = float(out.total)
                # refresh=False: tqdm redraws on its own schedule, with an up-to-date count.
                progress.set_postfix(loss=f"{loss:.4g}", lr=f"{self.lr[step]:.2e}", refresh=False)
                metrics.step(
                    step,
                    {"loss": loss, "lr": float(self.lr[step]), "grad_norm": float(out.grad_norm)},
                )
        meter.add("samples", float(len(self.loader.sampler)))
        self.skipped_total += skipped
        return self._epoch_record(epoch, meter.reduce(), time.perf_counter() - start, skipped)

    def _steps(self, epoch: int, first: int) -> tqdm:
        """The epoch's optimisation steps from step ``first`` on, each a list of
        ``accumulate_steps`` micro-batches, under a progress bar."""
        settings = self.settings
        # Every micro-batch before the step to continue at is full (only an epoch's last is not).
        self.loader.sampler.start_at(
            first * settings.accumulate_steps * settings.batch_size_per_gpu
        )
        with stop_signals_blocked():  # until the workers it forks ignore them
            micro_batches = iter(self.loader)
        steps = iter(lambda: list(itertools.islice(micro_batches, settings.accumulate_steps)), [])
        return tqdm(
            steps,
            total=self.iters,
            initial=first,
            disable=not self.env.is_main,
            desc=f"epoch {epoch + 1}/{settings.epochs}",
            dynamic_ncols=True,
            leave=False,
            # Sparse updates when stderr is a log file rather than a terminal.
            mininterval=0.5 if sys.stderr.isatty() else 60.0,
        )

    def _epoch_record(self, epoch: int, sums: dict, elapsed: float, skipped: int) -> dict:
        """The epoch's ``metrics.jsonl`` record from its reduced sums."""
        tasks = self.objective.network.spec.tasks
        last = (epoch + 1) * self.iters - 1
        record = {
            "epoch": epoch,
            "step": last + 1,
            "loss": mean_of(sums, "loss", "applied_steps"),
            "grad_norm": mean_of(sums, "grad_norm", "applied_steps"),
            "lr": float(self.lr[last]),
            "weight_decay": float(self.wd[last]),
            "samples_per_s": float(sums["samples"]) / elapsed,
            "epoch_time_s": elapsed,
            "skipped_steps": skipped,
            "skipped_steps_total": self.skipped_total,
        }
        weights = self.objective.balancer.weights()
        for task in tasks:
            record[f"loss/{task}"] = mean_of(sums, f"loss/{task}", f"valid/{task}")
            record[f"weight/{task}"] = weights[task]
        record |= epoch_signals(sums, tasks, self.objective.network.spec.n_rotations)
        return record

    def fit(
        self,
        ckpt_dir: Path,
        eval_set: EvalSet | None,
        held_out: DataLoader | None,
        network: dict,
        run_record: dict,
        best: dict | None,
    ) -> dict | None:
        """Train from ``start_epoch`` to the last epoch: each epoch trained, evaluated when due
        (``pretrain.eval_every``: the k-NN of ``eval_set`` and the learning signals on the
        ``held_out`` views), logged and checkpointed by rank 0; returns the best held-out score
        (``best``: the resumed run's)."""
        settings, env = self.settings, self.env
        within = self.resumed["steps"] if self.resumed else 0  # steps logged before a stop
        metrics = MetricsLog(
            ckpt_dir.parent,
            self.start_epoch,
            self.start_epoch * self.iters + within,
            active=env.is_main,
        )
        for epoch in range(self.start_epoch, settings.epochs):
            self.loader.sampler.set_epoch(epoch)
            self.loader.dataset.set_epoch(epoch)
            self.begin_epoch(epoch)
            try:
                record = self.run_epoch(epoch, metrics)
            except _EpochStopped as stopped:
                partial = stopped.partial
                if env.is_main:
                    checkpoint = self.checkpoint(epoch, network, run_record, best, partial)
                    save_checkpoint(ckpt_dir, checkpoint, settings.save_every)
                run_dir = ckpt_dir.parent
                self._stopped(run_dir, metrics, stopped.signal_name, epoch, partial["steps"])
            improved = False
            due = (epoch + 1) % max(settings.eval_every, 1) == 0 or epoch + 1 == settings.epochs
            if held_out is not None and due:
                signals = held_out_signals(self.objective, held_out, env, self.precision)
                record |= signals
                if env.is_main:
                    log.info(
                        "epoch %d/%d held-out signals: %s", epoch + 1, settings.epochs,
                        _signals_line(signals),
                    )  # fmt: skip
            if eval_set is not None and due:
                encoder = self.objective.exported_encoder().swinViT
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
            if env.is_main:
                metrics.epoch(record)
                checkpoint = self.checkpoint(epoch + 1, network, run_record, best)
                latest = save_checkpoint(ckpt_dir, checkpoint, settings.save_every)
                if improved and settings.keep_best:
                    keep_as_best(latest)
                log.info(
                    "epoch %d/%d: loss %.4g, %.2f samples/s, %d skipped steps",
                    epoch + 1, settings.epochs,
                    math.nan if record["loss"] is None else record["loss"],
                    record["samples_per_s"], record["skipped_steps"],
                )  # fmt: skip
            barrier()
            stop = self._stop_signal() if epoch + 1 < settings.epochs else None
            if stop is not None:  # the epoch's checkpoint is the one to resume from
                self._stopped(ckpt_dir.parent, metrics, stop, epoch + 1, 0)
        metrics.close()
        return best

    def _stopped(
        self, run_dir: Path, metrics: MetricsLog, signal_name: str, epoch: int, steps: int
    ) -> None:
        """End the run on a stop signal, its checkpoint written: say so in the run folder
        (rank 0) and raise :class:`TrainingStopped` on every rank."""
        stopped = TrainingStopped(signal_name, epoch, steps, self.iters)
        if self.env.is_main:
            write_stopped(
                run_dir,
                {"signal": signal_name, "epoch": epoch, "steps": steps, "iters": self.iters},
            )
            log.warning("%s; the latest checkpoint resumes there", stopped)
        barrier()
        metrics.close()
        raise stopped
