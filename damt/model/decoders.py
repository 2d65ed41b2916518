"""Dense decoders: atlas segmentation (U-Net style, skip connections) and MIM reconstruction."""

from __future__ import annotations

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from monai.networks.utils import pixelshuffle
from torch import nn

from damt.model.spec import EncoderSpec


class AtlasDecoder(nn.Module):
    """Segmentation logits (B, K, D, H, W) from the five hidden states.

    The SwinUNETR decoder without its image-level convolutions (as in the original DAMT): the
    deepest state goes through a residual block, then each up-block doubles the resolution and
    fuses the next shallower hidden state; a transposed convolution undoes the patch embedding.
    """

    def __init__(self, spec: EncoderSpec, n_classes: int, norm: str = "instance") -> None:
        super().__init__()
        ch = spec.channels()
        self.bottleneck = UnetrBasicBlock(
            spatial_dims=3,
            in_channels=ch[-1],
            out_channels=ch[-1],
            kernel_size=3,
            stride=1,
            norm_name=norm,
            res_block=True,
        )
        self.up = nn.ModuleList(
            UnetrUpBlock(
                spatial_dims=3,
                in_channels=ch[i + 1],
                out_channels=ch[i],
                kernel_size=3,
                upsample_kernel_size=2,
                norm_name=norm,
                res_block=True,
            )
            for i in reversed(range(len(ch) - 1))
        )
        self.unpatch = get_conv_layer(
            3,
            ch[0],
            ch[0],
            kernel_size=spec.patch,
            stride=spec.patch,
            conv_only=True,
            is_transposed=True,
        )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=ch[0], out_channels=n_classes)

    def forward(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottleneck(hidden[-1])
        for block, skip in zip(self.up, reversed(hidden[:-1]), strict=True):
            x = block(x, skip)
        return self.out(self.unpatch(x))


class MIMDecoder(nn.Module):
    """Voxel reconstruction from the last hidden state: 1×1×1 conv, then 3D pixel shuffle.

    The convolution predicts ``stride³ × in_channels`` values per token, which the shuffle lays
    out as the token's ``stride³`` voxels (SimMIM's light-weight decoder).
    """

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.stride = spec.stride
        self.in_channels = spec.in_channels
        self.proj = nn.Conv3d(spec.out_channels, spec.in_channels * self.stride**3, kernel_size=1)

    def forward(self, last_hidden: torch.Tensor) -> torch.Tensor:
        return pixelshuffle(self.proj(last_hidden), spatial_dims=3, scale_factor=self.stride)
