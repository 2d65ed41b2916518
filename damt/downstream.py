"""The pretrained weights for a downstream user: the preprocessing that makes the encoder's
input, a MONAI ``SwinUNETR`` with the encoder loaded, and the frozen encoder for features, each
from a run folder (or its model card) in one call.

    from damt.downstream import preprocess, swin_unetr
    model = swin_unetr("results/pretrain/default", out_channels=14)  # fine-tune as usual
    x = preprocess("results/pretrain/default")({"image": "sub-01/mri/brainmask.mgz"})["image"]
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from damt.model.monai_ssl import as_json
from damt.paths import MODEL_CARD_FILE
from damt.stages.cache import (
    check_nonempty,
    masked,
    monai_chain,
    settings_from_card,
    to_metatensor,
)
from damt.volumes import load_volume

CARD_FORMAT = "damt-model-card/"
# SwinUNETR arguments that set the encoder's architecture: fixed by the weights.
_ENCODER_ARGUMENTS = ("in_channels", "feature_size", "depths", "num_heads", "window_size")


def read_card(run_or_card: str | Path) -> tuple[dict, Path]:
    """The model card of a run (its folder or its ``model_card.json``) and the run folder."""
    path = Path(run_or_card)
    card_file = path / MODEL_CARD_FILE if path.is_dir() else path
    if not card_file.is_file():
        raise FileNotFoundError(f"no model card at {card_file}: is {path} a finished run?")
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{card_file} is not a damt model card: {exc}") from exc
    if not str(card.get("format", "")).startswith(CARD_FORMAT):
        raise ValueError(f"{card_file} is not a damt model card (format {card.get('format')})")
    return card, card_file.parent


class LoadMasked:
    """``{"image": path, "mask": path or None}`` → the image as a channel-first MetaTensor, read
    and masked as the training cache reads it (first frame of a 4-D file; voxels outside the
    mask set to 0)."""

    def __call__(self, data: dict) -> dict:
        image = load_volume(data["image"])
        mask = load_volume(data["mask"]) if data.get("mask") else None
        image = masked(image, mask)
        check_nonempty(image, data["image"])
        return {**data, "image": to_metatensor(image)}


def preprocess(run_or_card: str | Path | dict):
    """A MONAI dictionary ``Compose`` from ``{"image": path, "mask": path or None}`` to the
    encoder's input under ``"image"``: a (1, D, H, W) float16 MetaTensor, the same as the training
    cache holds for that subject (the card's ``preprocessing``: orientation, crop, spacing, pad,
    percentile scaling). A bad volume raises ``RuntimeError`` (MONAI's), caused by the reason.
    """
    import torch
    from monai import transforms as T

    card = run_or_card if isinstance(run_or_card, dict) else read_card(run_or_card)[0]
    settings = settings_from_card(card.get("preprocessing"))
    return T.Compose(
        [
            LoadMasked(),
            *monai_chain(settings, ("image",)).transforms,
            T.CastToTyped(keys="image", dtype=torch.float16),
        ]
    )


def swin_unetr(run_or_card: str | Path, out_channels: int, pretrained: bool = True, **overrides):
    """A MONAI ``SwinUNETR`` built with the run's encoder architecture (the model card's
    ``swin_unetr_kwargs``), its ``swinViT`` loaded strictly with the pretrained weights and its
    decoder initialised as MONAI does (``pretrained=False``: the same network left at its random
    initialisation, the from-scratch baseline).

    ``overrides`` go to ``SwinUNETR`` (``norm_name``, ``drop_rate``, ``use_checkpoint``, ...);
    those that set the encoder's architecture are refused unless they equal the card's.
    """
    from monai.networks.nets import SwinUNETR

    card, run_dir = read_card(run_or_card)
    kwargs = dict(card["architecture"]["swin_unetr_kwargs"])
    clash = {
        k: v for k, v in overrides.items() if k in _ENCODER_ARGUMENTS and as_json(v) != kwargs[k]
    }
    if clash:
        raise ValueError(
            f"{run_dir}: the pretrained encoder fixes "
            + ", ".join(f"{k}={kwargs[k]} (asked for {v})" for k, v in clash.items())
        )
    model = SwinUNETR(out_channels=out_channels, **{**kwargs, **overrides})
    if pretrained:
        model.swinViT.load_state_dict(load_file(str(run_dir / card["weights"])), strict=True)
    return model


def encoder(
    run_or_card: str | Path, device: str = "cpu", frozen: bool = True, pretrained: bool = True
):
    """The run's encoder: frozen (``eval`` mode, no gradients) for features, to pool with
    :func:`damt.model.pooled_features`; ``frozen=False`` to fine-tune it (pool with
    :func:`damt.model.brain_pool`); ``pretrained=False``: the same architecture at its random
    initialisation (seed torch first)."""
    from damt.model import build_encoder, load_encoder, read_encoder_spec

    card, run_dir = read_card(run_or_card)
    weights = run_dir / card["weights"]
    if pretrained:
        model = load_encoder(weights, device=device)
    else:
        model = build_encoder(read_encoder_spec(weights)).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(not frozen)
    return model if frozen else model.train()
