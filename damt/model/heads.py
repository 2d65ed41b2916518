"""Task heads on the encoder's hidden states: classification, projection, regression."""

from __future__ import annotations

import torch
from torch import nn


def pool(hidden: torch.Tensor) -> torch.Tensor:
    """The 'CLS token': global average pool of a (B, C, d, h, w) hidden state."""
    return hidden.mean(dim=(2, 3, 4))


def projection_head(in_channels: int, out_dim: int, projector: str) -> nn.Module:
    """The contrastive head (``pretrain.contrastive.projector``): one linear layer, or
    SimCLR's two-layer projector (Chen et al. 2020) with a GELU and without its batch norm, so
    that a process's batch of one sample still trains."""
    if projector == "linear":
        return nn.Linear(in_channels, out_dim)
    if projector == "mlp":
        return nn.Sequential(
            nn.Linear(in_channels, in_channels), nn.GELU(), nn.Linear(in_channels, out_dim)
        )
    raise ValueError(f"unknown contrastive projector {projector!r}")


class RegressionHead(nn.Module):
    """Per-token 1×1×1 convolution and GELU, average pool, then a linear map to ``out_dim``.

    The convolution lets every location contribute non-linearly before pooling (the original's
    Conv3d+FC), and pooling keeps the head independent of the crop size.
    """

    def __init__(self, in_channels: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, in_channels, kernel_size=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(in_channels, out_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc(pool(self.act(self.conv(hidden))))
