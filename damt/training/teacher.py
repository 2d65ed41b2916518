"""State the contrastive methods and the EMA keep beside the trained network: the EMA teacher
(``pretrain.ema``, DINO's teacher), DINO's prototypes and centre, and NT-Xent's memory queue.

All of it lives in :class:`damt.training.objective.PretrainObjective` as parameters without
gradient or buffers, so it is checkpointed and resumed with the objective's ``state_dict`` and
DDP never waits for a gradient of it. Every rank updates it identically (from parameters DDP keeps
equal, and from all-reduced or all-gathered values), so the ranks' copies stay equal.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from damt.model.encoder import SwinEncoder
from damt.model.heads import pool
from damt.training.distributed import all_reduce


class Prototypes(nn.Module):
    """DINO's last layer: the l2-normalised projection scored against ``out_dim`` unit-norm
    prototypes (DINO's weight-normalised linear layer with its norm fixed to 1,
    ``norm_last_layer=True``)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(z, dim=-1), F.normalize(self.weight, dim=-1))


class EmaTeacher(nn.Module):
    """An exponential moving average of the student's ``encoder`` and, for DINO, of its
    ``projection`` (the contrastive head) and ``prototypes``: copies made at construction
    (the teacher starts as the student, as in DINO), without gradients.
    """

    def __init__(
        self,
        encoder: SwinEncoder,
        projection: nn.Module | None = None,
        prototypes: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.projection = copy.deepcopy(projection) if projection is not None else None
        self.prototypes = copy.deepcopy(prototypes) if prototypes is not None else None
        self.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: list[nn.Module], momentum: float) -> None:
        """θ_t ← m θ_t + (1 − m) θ_s for the student's modules given in the order
        (encoder, projection, prototypes) of the ones this teacher holds."""
        mine = [m for m in (self.encoder, self.projection, self.prototypes) if m is not None]
        if len(mine) != len(student):
            raise ValueError(f"the teacher holds {len(mine)} modules, {len(student)} given")
        t = [p for module in mine for p in module.parameters()]
        s = [p.detach() for module in student for p in module.parameters()]
        torch._foreach_lerp_(t, s, 1.0 - momentum)

    @torch.no_grad()
    def scores(self, views: torch.Tensor) -> torch.Tensor:
        """DINO's teacher output: prototype scores of a batch of unmasked views."""
        hidden = self.encoder(views)
        return self.prototypes(self.projection(pool(hidden[-1])))


class Center(nn.Module):
    """DINO's centre of the teacher's output: an EMA of its mean over the global batch."""

    def __init__(self, out_dim: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def update(self, teacher: torch.Tensor) -> None:
        """Move the centre towards the mean of ``teacher`` (rows of all ranks, all-reduced)."""
        total = torch.cat([teacher.float().sum(0), teacher.new_tensor([teacher.shape[0]]).float()])
        all_reduce(total)
        mean = total[:-1] / total[-1].clamp_min(1)
        self.center.mul_(self.momentum).add_(mean[None], alpha=1.0 - self.momentum)


class NegativeQueue(nn.Module):
    """A ring buffer of the last ``size`` normalised embeddings and their subjects (MoCo's queue,
    He et al. 2020), the extra negatives of NT-Xent (``pretrain.contrastive.queue_size``).

    MoCo fills its queue with a momentum key encoder's embeddings. This queue holds the
    current encoder's own embeddings of earlier steps, detached: no second encoder pass per
    step, and with the slow learning rates of pretraining the embeddings drift little over a
    queue of a few steps (the observation of Wang et al. 2020, Cross-Batch Memory, CVPR, who
    use exactly such a memory once the first steps are past). The cost: entries are a little
    stale; keep the queue a few global batches long.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the embeddings and subjects (-1: an empty slot) for this step's logits."""
        return self.keys.clone(), self.ids.clone()

    @torch.no_grad()
    def push(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        """Enqueue ``keys`` (n, D), replacing the oldest entries (the last ``size`` when n is
        larger). Every rank pushes the same gathered keys, so the queues stay equal."""
        size = self.keys.shape[0]
        keys, ids = keys[-size:], ids[-size:]
        slots = (self.pointer + torch.arange(keys.shape[0], device=keys.device)) % size
        self.keys[slots] = keys.to(self.keys.dtype)
        self.ids[slots] = ids.to(torch.long)
        self.pointer.copy_((self.pointer + keys.shape[0]) % size)
