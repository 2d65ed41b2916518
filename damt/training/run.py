"""One pretraining run on this rank: ``run_pretraining`` is what ``damt train`` runs.

Resume or export-only from the latest checkpoint, the data, the network and its objective, the
run record (how the run trains: what its model card reports), the held-out evaluation set; then
the :class:`Trainer` fits and the run's encoder and model card are written
(:mod:`damt.training.export`).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from damt.config import with_schema_defaults
from damt.model.network import DAMTNetwork
from damt.model.spec import NetworkSpec
from damt.stages.cache import CacheSettings, preprocessing_card
from damt.training.checkpoint import Checkpoint, load_checkpoint
from damt.training.data import EpochSampler, PretrainDataset, TrainingData
from damt.training.distributed import DistEnv, init_distributed, shutdown
from damt.training.evaluate import build_eval_set
from damt.training.export import TrainResult, export_finished, finish_run
from damt.training.heldout import held_out_loader
from damt.training.inputs import TrainInputs
from damt.training.loop import Trainer, TrainingStopped
from damt.training.objective import PretrainObjective
from damt.training.process import StopSignal, ignore_stop_signals, run_lock
from damt.training.settings import ContrastiveSettings, EmaSettings, TrainSettings
from damt.training.views import ROTATIONS

log = logging.getLogger("damt.train")

# The config sections a run reads: its settings, the held-out evaluation's targets, and the
# cache settings that made its inputs (the model card's preprocessing).
CONFIG_SECTIONS = ("pretrain", "probe", "cache")


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
        contrastive_projector=settings.contrastive.projector,
    )


def _plain(obj: object) -> object:
    """``obj`` as JSON types (numpy scalars as numbers): checkpoints load with weights_only."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA kernels (e.g. 3-D interpolation backward) have no deterministic
        # version; a warning names them instead of stopping the run.
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def run_pretraining(
    config: dict, inputs: TrainInputs, run_dir: str | Path, cores: int | None = None
) -> TrainResult:
    """Train (or resume) the run in ``run_dir`` on this rank; rank 0 writes every output.

    A stop signal (SIGTERM, SIGUSR1) ends it at the next step boundary with a checkpoint:
    :class:`~damt.training.loop.TrainingStopped` is raised on every rank.
    """
    with StopSignal() as stop:
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
        try:
            with run_lock(run_dir) if env.is_main else nullcontext():
                result = _train(settings, config, inputs, Path(run_dir), env, stop)
        except TrainingStopped:
            shutdown()  # every rank stopped at the same step
            raise
    # Only after success: a failing rank exits instead, and torchrun stops the others.
    shutdown()
    return result


def _check_resumable(
    checkpoint: Checkpoint, spec: NetworkSpec, settings: TrainSettings, run_dir: Path
) -> None:
    """Refuse to resume a checkpoint of another network or another task balancing."""
    changed = NetworkSpec.from_dict(checkpoint.network).differences(spec)
    trained = with_schema_defaults("pretrain", checkpoint.run["config"])
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


def describe_run(
    settings: TrainSettings, config: dict, trainer: Trainer, data: TrainingData, env: DistEnv
) -> dict:
    """The run record: how the run trains, what its model card reports; kept in every
    checkpoint for a later export-only run (one process, maybe other settings and inputs under
    retrain: never)."""
    return _plain(
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
            "config": dict(settings.section),
            "data": data.summary,
            "preprocessing": preprocessing_card(
                CacheSettings.from_config(config["cache"]), config["cache"]
            ),
        }
    )


def _loader(data: TrainingData, settings: TrainSettings, env: DistEnv) -> DataLoader:
    dataset = PretrainDataset(data, settings.views, settings.seed, settings.augment)
    # The sampler pads the epoch to a multiple of the world size, so every rank runs the same
    # number of steps; the last batch may be short.
    sampler = EpochSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=settings.seed
    )
    return DataLoader(
        dataset,
        batch_size=settings.batch_size_per_gpu,
        sampler=sampler,
        num_workers=settings.num_workers,
        pin_memory=env.device.type == "cuda",
        # A cluster signals every process of the job: a worker must not die of it (the
        # trainer would fail on the lost worker) but wait until the trainer ends it.
        worker_init_fn=_ignore_stop_signals,
    )


def _ignore_stop_signals(worker_id: int) -> None:
    ignore_stop_signals()


def _train(
    settings: TrainSettings,
    config: dict,
    inputs: TrainInputs,
    run_dir: Path,
    env: DistEnv,
    stop: StopSignal,
) -> TrainResult:
    ckpt_dir = run_dir / "checkpoints"
    checkpoint = load_checkpoint(ckpt_dir)
    if checkpoint is not None and checkpoint.epoch >= settings.epochs:
        if checkpoint.partial is not None:
            raise ValueError(
                f"{run_dir}: the latest checkpoint stopped {checkpoint.partial['steps']} steps "
                f"into epoch {checkpoint.epoch + 1}, past pretrain.epochs {settings.epochs}, "
                "so it is no finished run to export: set pretrain.epochs above "
                f"{checkpoint.epoch} to finish the epoch it stopped in"
            )
        return export_finished(checkpoint, run_dir, env)
    data = inputs.load(settings.tasks, settings.subset_size)
    spec = network_spec(settings, data)
    if checkpoint is not None:
        _check_resumable(checkpoint, spec, settings, run_dir)
    loader = _loader(data, settings, env)
    torch.manual_seed(settings.seed)
    objective = PretrainObjective(
        DAMTNetwork(spec, settings.attention),
        settings.balancing,
        settings.contrastive_temperature,
        settings.contrastive,
        settings.ema,
    )
    objective.to(env.device)
    trainer = Trainer(settings, objective, loader, env, checkpoint, stop)
    if checkpoint is not None and trainer.resumed and trainer.resumed["steps"]:
        log.info(
            "resuming %s in epoch %d after step %d of %d", run_dir, trainer.start_epoch + 1,
            trainer.resumed["steps"], trainer.iters,
        )  # fmt: skip
    elif checkpoint is not None:
        log.info("resuming %s after epoch %d", run_dir, trainer.start_epoch)
    run_record = describe_run(settings, config, trainer, data, env)
    if env.is_main:
        log.info(
            "training %d subjects on %d %s process(es): %d steps/epoch, global batch %d "
            "(%d micro-batch(es) per step), peak lr %.3g, %s, tasks %s, %.1fM parameters",
            len(loader.dataset), env.world_size, env.device.type, trainer.iters,
            trainer.global_batch, settings.accumulate_steps, trainer.peak_lr, trainer.precision,
            ",".join(settings.tasks), sum(p.numel() for p in objective.parameters()) / 1e6,
        )  # fmt: skip
    eval_set = None
    if settings.eval_every:
        probe = config["probe"]
        eval_set = build_eval_set(
            inputs.manifest, probe["phenotypes"], probe["targets"], settings.eval_subjects,
            spec.encoder.stride,
        )  # fmt: skip
    held_out = held_out_loader(inputs, settings, env) if settings.eval_every else None
    best = trainer.fit(
        ckpt_dir,
        eval_set,
        held_out,
        spec.to_dict(),
        run_record,
        None if checkpoint is None else checkpoint.eval_best,
    )
    return finish_run(
        run_dir, objective, run_record, best if settings.keep_best else None, settings.epochs,
        settings.epochs * trainer.iters, trainer.skipped_total, env,
    )  # fmt: skip
