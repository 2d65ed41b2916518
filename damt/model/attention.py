"""Window attention of the Swin blocks through ``scaled_dot_product_attention``, with gradients.

MONAI 1.6.1's ``WindowAttention(use_flash_attention=True)`` calls SDPA only when autograd is off,
so training materialises every (windows × heads × n × n) score matrix, its softmax and their
gradients in the encoder's precision. :class:`SDPAWindowAttention` computes the same function
(Liu et al. 2021, "Swin Transformer", eq. 4: softmax(QKᵀ/√d + B + M)V, B the relative position
bias, M the shifted-window mask) with one SDPA call whose additive mask is B + M, so PyTorch can
pick a fused kernel (memory-efficient or cuDNN attention on GPUs) for the forward and backward
pass. It subclasses MONAI's module and adds no parameter or buffer: state dicts are unchanged and
the weights still load strictly into ``SwinUNETR(...).swinViT``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

ATTENTION_KINDS = ("sdpa", "monai")


class SDPAWindowAttention(WindowAttention):
    """MONAI's ``WindowAttention`` whose forward always goes through SDPA."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B·nW, n, C) tokens of nW windows of n = window³ tokens; mask: (nW, n, n) or None.
        b, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B·nW, h, n, d)
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, h).permute(2, 0, 1)  # (h,n,n)
        if mask is None:
            attn_mask = bias.unsqueeze(0)  # (1, h, n, n), broadcast over windows
        else:
            nw = mask.shape[0]
            # (B, nW, h, n, n) -> (B·nW, h, n, n): fused kernels take 4-D inputs, so the shift
            # mask's window axis is spelled out per batch element.
            attn_mask = (bias.unsqueeze(0) + mask.unsqueeze(1)).expand(b // nw, nw, h, n, n)
            attn_mask = attn_mask.reshape(b, h, n, n)
        p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=p, scale=self.scale
        )  # (B·nW, h, n, d)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


def set_attention(module: nn.Module, kind: str) -> nn.Module:
    """Switch every Swin window attention inside ``module`` to ``kind`` (in place; returned).

    ``sdpa``: :class:`SDPAWindowAttention`; ``monai``: MONAI's own forward (the reference).
    Only the class changes, so parameters, buffers and state-dict keys stay as they are.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention {kind!r}: expected one of {list(ATTENTION_KINDS)}")
    target = SDPAWindowAttention if kind == "sdpa" else WindowAttention
    for sub in module.modules():
        if isinstance(sub, WindowAttention):
            sub.__class__ = target
    return module
