"""The encoder: MONAI's 3D Swin Transformer, plus the masked forward pass MIM needs.

``SwinEncoder.swinViT`` is exactly the module ``SwinUNETR(...).swinViT`` holds, so its state dict
is what ``encoder.safetensors`` stores. The functions at the end are what downstream users (the
linear probe) need: build an encoder, load released weights, pool the last hidden state.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformer
from safetensors.torch import load_file, safe_open
from torch import nn

from damt.model.attention import set_attention
from damt.model.spec import EncoderSpec

SPEC_METADATA_KEY = "damt_encoder_spec"


class SwinEncoder(nn.Module):
    """MONAI ``SwinTransformer`` with an optional learnable mask token for masked encoding.

    ``attention`` selects the window attention's implementation (``damt.model.attention``); the
    parameters are the same either way.
    """

    def __init__(
        self, spec: EncoderSpec, mask_token: bool = False, attention: str = "sdpa"
    ) -> None:
        super().__init__()
        self.spec = spec
        self.swinViT = build_encoder(spec, attention)
        self.mask_token = nn.Parameter(torch.zeros(spec.embed_dim)) if mask_token else None
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self, x: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Five layer-normalised hidden states, as ``SwinUNETR`` uses them.

        ``token_mask`` (B, d, h, w) at patch-embedding resolution: tokens where it is true are
        replaced by the mask token before the first stage (SimMIM).
        """
        vit = self.swinViT
        if token_mask is None:
            return vit(x, normalize=True)
        if self.mask_token is None:
            raise RuntimeError("this encoder was built without a mask token")
        x0 = vit.patch_embed(x)
        m = token_mask.unsqueeze(1).to(x0.dtype)
        x0 = x0 * (1 - m) + self.mask_token.to(x0.dtype).view(1, -1, 1, 1, 1) * m
        # The rest mirrors SwinTransformer.forward (use_v2=False), which has no hook for masking.
        x = vit.pos_drop(x0)
        hidden = [vit.proj_out(x, True)]
        for stage in (vit.layers1, vit.layers2, vit.layers3, vit.layers4):
            x = stage[0](x.contiguous())
            hidden.append(vit.proj_out(x, True))
        return hidden


def build_encoder(spec: EncoderSpec, attention: str = "sdpa") -> SwinTransformer:
    """A randomly initialised encoder, the same module as ``SwinUNETR(...).swinViT``, its window
    attention computed by ``attention`` (see :func:`damt.model.attention.set_attention`).
    """
    return set_attention(SwinTransformer(**spec.swin_kwargs()), attention)


def encoder_metadata(spec: EncoderSpec) -> dict[str, str]:
    """Metadata stored in ``encoder.safetensors`` so the file describes its own architecture."""
    return {
        SPEC_METADATA_KEY: spec.to_json(),
        "swin_unetr_kwargs": json.dumps(spec.swin_unetr_kwargs(), sort_keys=True),
        "format": "damt-encoder/1",
    }


def read_encoder_spec(weights: str | Path) -> EncoderSpec:
    """The architecture recorded in an ``encoder.safetensors`` written by the trainer."""
    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata() or {}
    if SPEC_METADATA_KEY not in meta:
        raise ValueError(f"{weights}: no '{SPEC_METADATA_KEY}' metadata; pass the spec explicitly")
    return EncoderSpec.from_json(meta[SPEC_METADATA_KEY])


def load_encoder(
    weights: str | Path, spec: EncoderSpec | None = None, device: str | torch.device = "cpu"
) -> SwinTransformer:
    """Build the encoder (from ``spec`` or the file's metadata) and load weights strictly."""
    spec = spec or read_encoder_spec(weights)
    encoder = build_encoder(spec)
    encoder.load_state_dict(load_file(str(weights)), strict=True)
    return encoder.to(device).eval()


def pad_to_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Zero-pad the spatial axes of (B, C, D, H, W) at the end to multiples of ``stride``."""
    pads: list[int] = []
    for size in reversed(x.shape[2:]):
        pads += [0, (-size) % stride]
    return F.pad(x, pads) if any(pads) else x


def encoder_stride(encoder: SwinTransformer) -> int:
    """Voxels per last-stage token along an axis (patch size × 2 per stage)."""
    patch = encoder.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    return int(patch) * 2 ** int(encoder.num_layers)


def brain_pool(encoder: SwinTransformer, x: torch.Tensor) -> torch.Tensor:
    """:func:`pooled_features` with gradients, for fine-tuning: the mean of the last hidden
    state over the tokens whose footprint holds a nonzero voxel, (B, C), for a batch
    (B, 1, D, H, W) already on the encoder's device and padded to its stride."""
    stride = encoder_stride(encoder)
    hidden = encoder(x, normalize=True)[-1]  # (B, C, d, h, w)
    mask = F.max_pool3d((x != 0).to(hidden.dtype), kernel_size=stride, stride=stride)
    return (hidden * mask).sum(dim=(2, 3, 4)) / mask.sum(dim=(2, 3, 4)).clamp_min(1)


@torch.no_grad()
def pooled_features(encoder: SwinTransformer, x: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden state over the tokens that cover the brain, (B, C) (use an
    encoder in eval mode, as :func:`load_encoder` returns it).

    ``x`` is one volume (D, H, W), one channel-first volume (1, D, H, W) or a batch
    (B, 1, D, H, W). Volumes of any size are zero-padded to a multiple of the encoder's stride;
    a token counts when its footprint holds a nonzero voxel (the cache's background is 0), so
    neither the padding nor the background share enters the mean. For features independent of
    where the brain sits, centre every volume on one grid first (``damt.probe.features.centred``).
    """
    if x.ndim == 3:
        x = x[None, None]
    elif x.ndim == 4:
        x = x[None]
    device = next(encoder.parameters()).device
    x = x.as_subclass(torch.Tensor).to(device, torch.float32)
    return brain_pool(encoder, pad_to_stride(x, encoder_stride(encoder)))
