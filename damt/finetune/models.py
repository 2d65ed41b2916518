"""The networks fine-tuned, built through :mod:`damt.downstream` as a user would build them: the
run's encoder with a pooled linear head (phenotypes), MONAI's ``SwinUNETR`` (segmentation); and
their optimiser's parameter groups."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from damt import downstream
from damt.finetune.settings import PRETRAINED, SEGMENTATION, FinetuneSettings, Task
from damt.model import brain_pool, encoder_stride

# MONAI SwinTransformer's modules in input order: a pretrained module's depth for layer decay.
ENCODER_STAGES = ("patch_embed", "layers1", "layers2", "layers3", "layers4")


class PooledHead(nn.Module):
    """The encoder, its last hidden state averaged over the brain's tokens, and a linear head:
    (B, 1, D, H, W) → (B, out)."""

    def __init__(self, encoder: nn.Module, width: int, out: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.stride = encoder_stride(encoder)
        self.head = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(brain_pool(self.encoder, x))


def build_model(
    run: str | Path, task: Task, init: str, n_out: int, seed: int, device: str
) -> tuple[nn.Module, nn.Module]:
    """The network of a unit and its encoder part (``swinViT`` for segmentation), seeded by
    ``seed`` (its head, its decoder and, from scratch, its encoder)."""
    torch.manual_seed(seed)
    pretrained = init == PRETRAINED
    if task.kind == SEGMENTATION:
        model = downstream.swin_unetr(run, out_channels=n_out, pretrained=pretrained)
        return model.to(device), model.swinViT
    encoder = downstream.encoder(run, device=device, frozen=False, pretrained=pretrained)
    width = downstream.read_card(run)[0]["architecture"]["pooled_feature_dim"]
    return PooledHead(encoder, width, n_out).to(device), encoder


def parameter_groups(
    model: nn.Module, encoder: nn.Module, init: str, settings: FinetuneSettings
) -> list[dict]:
    """AdamW groups: the head or decoder at ``lr``; a pretrained encoder at ``lr ×
    encoder_lr_factor``, each stage a further ``layer_decay`` below the one after it (BEiT's
    layer-wise decay; 1 = off); an encoder from scratch at ``lr``, as it has nothing to keep. A
    frozen encoder is left out (no gradients)."""
    enc_ids = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in enc_ids and p.requires_grad]
    groups = [{"params": rest, "lr": settings.lr}]
    if settings.freeze_encoder:
        return groups
    for depth, stage in enumerate(ENCODER_STAGES):
        scale = 1.0
        if init == PRETRAINED:
            scale = settings.encoder_lr_factor * settings.layer_decay ** (
                len(ENCODER_STAGES) - 1 - depth
            )
        groups.append(
            {"params": list(getattr(encoder, stage).parameters()), "lr": settings.lr * scale}
        )
    return groups


def freeze(encoder: nn.Module) -> None:
    """No gradients for the encoder, and its normalisation statistics kept (eval mode)."""
    for p in encoder.parameters():
        p.requires_grad_(False)
    encoder.eval()
