"""Task losses, masking of missing targets, and uncertainty weighting across tasks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from damt.training.distributed import gather_with_grad


def masked_l1(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute error over the finite entries of ``target``, and their count.

    Missing targets (NaN) are excluded element by element; a batch without any finite target
    gives loss 0 with the head still in the graph (DDP needs every parameter to get a gradient).
    """
    mask = torch.isfinite(target)
    # Filling before subtracting keeps NaN out of the backward pass as well.
    diff = (pred.float() - torch.where(mask, target, 0.0)).abs() * mask
    count = mask.sum()
    return diff.sum() / count.clamp_min(1), count


def mim_l1(recon: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 reconstruction error on the masked MIM patches only.

    ``recon`` and ``image`` (B, C, G, G, G); ``mask`` (B, g, g, g) on the patch grid. Errors are
    averaged per patch first: all patches have the same number of voxels, so this equals the
    mean over masked voxels without building a voxel mask.
    """
    b, c, size = image.shape[0], image.shape[1], image.shape[-1]
    g = mask.shape[-1]
    p = size // g
    err = (recon.float() - image.float()).abs().reshape(b, c, g, p, g, p, g, p)
    per_patch = err.mean(dim=(1, 3, 5, 7))
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1)


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent between paired embeddings, over the global batch of all DDP ranks.

    Works for any batch size, including a short last batch. The anchors are this rank's 2N_r
    embeddings; the candidates are all 2N embeddings of all ranks. Returns the loss and whether
    it is defined (False with a single pair in the global batch: nothing to contrast against).
    """
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    all1, offset = gather_with_grad(z1)
    all2, _ = gather_with_grad(z2)
    n_local, n = z1.shape[0], all1.shape[0]
    logits = torch.cat([z1, z2]) @ torch.cat([all1, all2]).T / temperature
    own = torch.arange(n_local, device=z1.device) + offset
    rows = torch.arange(2 * n_local, device=z1.device)
    self_cols = torch.cat([own, own + n])
    positive = torch.cat([own + n, own])
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, self_cols] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positive), torch.tensor(n > 1, device=z1.device)


class UncertaintyWeighting(nn.Module):
    """Kendall et al. (2018): total = Σ_t exp(-s_t) · L_t + s_t, one learnable s_t = log σ_t².

    A task without valid samples in a batch (e.g. no morphometry) drops out of that step's sum
    entirely; otherwise its s_t would drift towards -inf on zero losses.
    """

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in tasks})

    def forward(self, losses: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]):
        total = 0.0
        for task, loss in losses.items():
            s = self.log_vars[task]
            total = total + valid[task].float() * (torch.exp(-s) * loss + s)
        return total

    def weights(self) -> dict[str, float]:
        """Current task weights exp(-s_t)."""
        return {t: float(torch.exp(-s.detach())) for t, s in self.log_vars.items()}


class EqualWeighting(nn.Module):
    """Plain sum of the task losses (the ablation of uncertainty weighting)."""

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.tasks = tasks

    def forward(self, losses: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]):
        return sum(valid[t].float() * loss for t, loss in losses.items())

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.tasks, 1.0)
