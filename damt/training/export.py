"""Released artefacts of a run: ``encoder.safetensors`` and ``model_card.json``."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import monai
import torch
from safetensors.torch import save_file

import damt
from damt.io import atomic_path, write_json_atomic
from damt.model.encoder import SwinEncoder, encoder_metadata
from damt.paths import ENCODER_FILE


def export_encoder(encoder: SwinEncoder, path: str | Path) -> Path:
    """Write the Swin weights with keys of ``SwinUNETR(...).swinViT`` (no mask token)."""
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.swinViT.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=encoder_metadata(encoder.spec))
    return Path(path)


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
        },
        "code": code_version(),
        **sections,
    }
    write_json_atomic(path, card)
