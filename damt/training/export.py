"""Released artefacts of a run: ``encoder.safetensors`` (and its EMA twin) and
``model_card.json``, written at the end of a trained run or from a finished run's checkpoint."""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import monai
import torch
from safetensors.torch import save_file

import damt
from damt.config import schema_defaults, with_schema_defaults
from damt.io import atomic_path, write_json_atomic
from damt.model.encoder import SwinEncoder, encoder_metadata
from damt.model.monai_ssl import monai_ssl_state, script_arguments
from damt.model.network import DAMTNetwork
from damt.model.spec import NetworkSpec, encoder_spec_from_config
from damt.paths import ENCODER_EMA_FILE, ENCODER_FILE, MODEL_CARD_FILE, MONAI_SSL_FILE
from damt.stages.cache import CacheSettings, preprocessing_card
from damt.training.checkpoint import BEST, Checkpoint
from damt.training.distributed import DistEnv, barrier
from damt.training.metrics import read_records
from damt.training.objective import PretrainObjective
from damt.training.settings import ContrastiveSettings, EmaSettings
from damt.training.signals import card_summary

log = logging.getLogger("damt.train")


@dataclass
class TrainResult:
    """The trained module (unwrapped) and the last epoch's metrics record."""

    objective: PretrainObjective
    last_record: dict | None


def export_encoder(encoder: SwinEncoder, path: str | Path, monai_ssl: str | Path | None = None):
    """Write the Swin weights with keys of ``SwinUNETR(...).swinViT`` (no mask token); with
    ``monai_ssl``, the same weights there in the layout ``SwinUNETR.load_from`` reads."""
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.swinViT.state_dict().items()}
    with atomic_path(path, durable=True) as tmp:
        save_file(state, str(tmp), metadata=encoder_metadata(encoder.spec))
    if monai_ssl is not None:
        with atomic_path(monai_ssl, durable=True) as tmp:
            torch.save(monai_ssl_state(state), tmp)


def export_random_run(run: str | Path, preset: str = "tiny", seed: int = 0) -> SwinEncoder:
    """``run``: a new run folder holding a randomly initialised encoder of the schema's
    ``preset`` (seeded by ``seed``) and its model card with the schema's cache preprocessing,
    exported as a finished run exports one (tests, benchmarks); the encoder."""
    torch.manual_seed(seed)
    encoder = SwinEncoder(
        encoder_spec_from_config({**schema_defaults("pretrain"), "preset": preset})
    )
    run = Path(run)
    run.mkdir(parents=True)
    export_encoder(encoder, run / ENCODER_FILE, run / MONAI_SSL_FILE)
    cache = schema_defaults("cache")
    card = preprocessing_card(CacheSettings.from_config(cache), cache)
    write_model_card(run / MODEL_CARD_FILE, encoder, preprocessing=card)
    return encoder


def code_version() -> dict:
    """Versions of the code that trained the weights (git commit when run from a checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(damt.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "damt": damt.__version__,
        "git_commit": commit,
        "torch": torch.__version__,
        "monai": monai.__version__,
    }


def write_model_card(
    path: str | Path, encoder: SwinEncoder, ema_weights: str | None = None, **sections
) -> None:
    """A small JSON description of the weights: how to load them, what trained them, on what.

    ``ema_weights``: the file of the EMA encoder (same architecture and keys), if written.
    """
    spec = encoder.spec
    kwargs = spec.swin_unetr_kwargs()
    try:
        scripts: dict = {"arguments": script_arguments(kwargs)}
    except ValueError as exc:
        scripts = {"arguments": None, "why_not": str(exc)}
    card = {
        "format": "damt-model-card/1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "weights": ENCODER_FILE,
        "weights_ema": ema_weights,
        "architecture": {
            "module": "monai.networks.nets.SwinUNETR(...).swinViT",
            "swin_unetr_kwargs": spec.swin_unetr_kwargs(),
            "pooled_feature_dim": spec.out_channels,
            # The relative-position tables' size follows the window: a SwinUNETR built with
            # another window_size cannot load these weights.
            "window_size": spec.window,
            "stride": spec.stride,
            "load": (
                "SwinUNETR(out_channels=..., **swin_unetr_kwargs).swinViT.load_state_dict("
                "safetensors.torch.load_file('encoder.safetensors'))"
            ),
            # The same weights for SwinUNETR.load_from and MONAI's fine-tuning scripts.
            "monai_ssl_weights": {
                "file": MONAI_SSL_FILE,
                "load": (
                    "SwinUNETR(out_channels=..., **swin_unetr_kwargs).load_from("
                    f"torch.load('{MONAI_SSL_FILE}'))"
                ),
                "scripts": scripts,
            },
        },
        "code": code_version(),
        **sections,
    }
    write_json_atomic(path, card, durable=True)


def export_finished(checkpoint: Checkpoint, run_dir: Path, env: DistEnv) -> TrainResult:
    """Export a finished run from its checkpoint alone: the network it trained (not one rebuilt
    from the current tables and label table) and the record of its training for the model card.
    """
    run_record = checkpoint.run
    # The run's settings as it recorded them, under today's defaults for keys added since.
    trained = with_schema_defaults("pretrain", run_record["config"])
    objective = PretrainObjective(
        DAMTNetwork(NetworkSpec.from_dict(checkpoint.network)),
        trained["balancing"],
        trained["contrastive_temperature"],
        ContrastiveSettings.from_pretrain(trained),
        EmaSettings.from_pretrain(trained),
    )
    objective.load_state_dict(checkpoint.model)
    log.info(
        "%s finished its %d epochs: exporting its weights (no training)", run_dir, checkpoint.epoch
    )
    best = checkpoint.eval_best if trained["keep_best"] else None
    return finish_run(
        run_dir, objective, run_record, best, checkpoint.epoch, checkpoint.step,
        checkpoint.skipped_steps, env,
    )  # fmt: skip


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


def finish_run(
    run_dir: Path,
    objective: PretrainObjective,
    run_record: dict,
    best: dict | None,
    epochs: int,
    steps: int,
    skipped_steps: int,
    env: DistEnv,
) -> TrainResult:
    """The end of a run, trained or exported: rank 0 writes ``encoder.safetensors`` (the student,
    or dino's teacher with ``contrastive.export: teacher``) and ``model_swinvit.pt`` (the same
    weights for ``SwinUNETR.load_from``), ``encoder_ema.safetensors`` with ``pretrain.ema``,
    and ``model_card.json`` (``run_record``: :func:`damt.training.run.describe_run`; ``best``:
    the best held-out score under ``pretrain.keep_best``) with the last epoch's metrics record.
    """
    records = read_records(run_dir)
    last_record = records[-1] if records else None
    if env.is_main:
        encoder = objective.exported_encoder()
        export_encoder(encoder, run_dir / ENCODER_FILE, run_dir / MONAI_SSL_FILE)
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
                "world_size": run_record["world_size"],
                "nodes": run_record.get("nodes", 1),  # checkpoints before multi-node runs: one
                "device": run_record["device"],
                "precision": run_record["precision"],
                "global_batch": run_record["global_batch"],
                # Checkpoints before these settings: no accumulation, curriculum, augmentation.
                "accumulate_steps": run_record.get("accumulate_steps", 1),
                "peak_lr": run_record["peak_lr"],
                "skipped_steps": skipped_steps,
                "tasks": run_record["tasks"],
                "curriculum": run_record.get("curriculum", []),
                "augment": run_record.get("augment", []),
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
                "config": run_record["config"],
                "cost": training_cost(
                    records, encoder, run_record["world_size"], run_record["device"]
                ),
                "final_epoch": last_record,
                "learning_signals": card_summary(last_record),
                # pretrain.keep_best: the checkpoint of the best held-out k-NN score.
                "best_checkpoint": {**best, "file": f"checkpoints/{BEST}"} if best else None,
            },
            data=run_record["data"],
            # Checkpoints before damt recorded it have none.
            preprocessing=run_record.get("preprocessing"),
        )
        log.info(
            "wrote %s%s and %s",
            run_dir / ENCODER_FILE,
            f", {run_dir / ENCODER_EMA_FILE}" if ema is not None else "",
            run_dir / MODEL_CARD_FILE,
        )
    barrier()
    return TrainResult(objective, last_record)
