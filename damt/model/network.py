"""The pretraining network: the Swin encoder and one head per switched-on task.

Heads of switched-off tasks are not built, so every parameter receives a gradient at every step
and DDP runs without ``find_unused_parameters``.
"""

from __future__ import annotations

import torch
from torch import nn

from damt.model.decoders import AtlasDecoder, MIMDecoder
from damt.model.encoder import SwinEncoder
from damt.model.heads import RegressionHead, pool, projection_head
from damt.model.spec import NetworkSpec


class DAMTNetwork(nn.Module):
    """Encoder (+ mask token when MIM is on) and the heads of ``spec.tasks``; ``attention`` is
    the encoder's window-attention implementation (``pretrain.attention``).
    """

    def __init__(self, spec: NetworkSpec, attention: str = "sdpa") -> None:
        super().__init__()
        self.spec = spec
        tasks = set(spec.tasks)
        width = spec.encoder.out_channels
        self.encoder = SwinEncoder(spec.encoder, mask_token="mim" in tasks, attention=attention)
        heads: dict[str, nn.Module] = {}
        if "rotation" in tasks:
            heads["rotation"] = nn.Linear(width, spec.n_rotations)
        if "location" in tasks:
            heads["location"] = nn.Linear(width, spec.n_locations)
        if "contrastive" in tasks:
            heads["contrastive"] = projection_head(
                width, spec.contrastive_dim, spec.contrastive_projector
            )
        if "morphometry" in tasks:
            heads["morphometry"] = RegressionHead(width, spec.morphometry_dim)
        if "radiomics" in tasks:
            heads["radiomics"] = RegressionHead(width, spec.radiomics_dim)
        if "atlas" in tasks:
            heads["atlas"] = AtlasDecoder(spec.encoder, spec.n_atlas_classes)
        if "mim" in tasks:
            heads["mim"] = MIMDecoder(spec.encoder)
        self.heads = nn.ModuleDict(heads)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states and pooled last state of an unmasked view."""
        hidden = self.encoder(x)
        return hidden, pool(hidden[-1])

    def encode_mask(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Like :meth:`encode`, with the tokens under ``mask`` replaced by the mask token.

        ``mask`` (B, m, m, m) is on the MIM patch grid; it is expanded to the token grid here.
        """
        factor = x.shape[-1] // mask.shape[-1] // self.spec.encoder.patch
        token_mask = mask
        for axis in (1, 2, 3):
            token_mask = token_mask.repeat_interleave(factor, dim=axis)
        hidden = self.encoder(x, token_mask)
        return hidden, pool(hidden[-1])

    def head(self, task: str, features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Apply the head of ``task`` to pooled features, a hidden state or all hidden states."""
        return self.heads[task](features)
