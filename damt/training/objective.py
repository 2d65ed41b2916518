"""One forward pass of the seven tasks on a batch of views: the module DDP wraps.

The task weighting lives inside this module so that its log-variances are averaged across ranks
by DDP like every other parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from damt.model.network import DAMTNetwork
from damt.training.losses import (
    EqualWeighting,
    UncertaintyWeighting,
    masked_l1,
    mim_l1,
    nt_xent,
)

# Which encoder passes each task needs.
_GLOBAL_PLAIN = {"rotation", "contrastive", "atlas", "morphometry", "radiomics"}
_LOCAL_PLAIN = {"rotation", "location", "atlas"}


class PretrainObjective(nn.Module):
    """Network + task weighting; ``forward(batch)`` returns the total loss and per-task terms."""

    def __init__(self, network: DAMTNetwork, balancing: str, temperature: float) -> None:
        super().__init__()
        self.network = network
        self.temperature = temperature
        tasks = network.spec.tasks
        if balancing == "uncertainty":
            self.balancer: nn.Module = UncertaintyWeighting(tasks)
        elif balancing == "equal":
            self.balancer = EqualWeighting(tasks)
        else:
            raise ValueError(f"unknown loss balancing {balancing!r}")

    def forward(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Total loss, per-task losses and per-task validity flags (0-d tensors)."""
        net, tasks = self.network, set(self.network.spec.tasks)
        views = batch["global_image"]
        local = batch["local_image"]
        one = torch.ones((), device=views.device)
        losses: dict[str, torch.Tensor] = {}
        valid: dict[str, torch.Tensor] = {}

        if tasks & _GLOBAL_PLAIN:
            h1, cls1 = net.encode(views[:, 0])
        if "mim" in tasks:
            h2, cls2 = net.encode_mask(views[:, 1], batch["global_mask"])
            h4, _ = net.encode_mask(local, batch["local_mask"])
        elif "contrastive" in tasks:
            h2, cls2 = net.encode(views[:, 1])
        if tasks & _LOCAL_PLAIN:
            h3, cls3 = net.encode(local)

        if "rotation" in tasks:
            logits = net.head("rotation", torch.cat([cls1, cls3]))
            target = torch.cat([batch["global_rotation"][:, 0], batch["local_rotation"]])
            losses["rotation"], valid["rotation"] = F.cross_entropy(logits.float(), target), one
        if "location" in tasks:
            logits = net.head("location", cls3)
            losses["location"] = F.cross_entropy(logits.float(), batch["location"])
            valid["location"] = one
        if "contrastive" in tasks:
            losses["contrastive"], valid["contrastive"] = nt_xent(
                net.head("contrastive", cls1), net.head("contrastive", cls2), self.temperature
            )
        if "atlas" in tasks:
            glob = F.cross_entropy(net.head("atlas", h1).float(), batch["global_atlas"].long())
            loc = F.cross_entropy(net.head("atlas", h3).float(), batch["local_atlas"].long())
            losses["atlas"], valid["atlas"] = 0.5 * (glob + loc), one
        for task in ("morphometry", "radiomics"):
            if task in tasks:
                loss, count = masked_l1(net.head(task, h1[-1]), batch[task])
                losses[task], valid[task] = loss, count > 0
        if "mim" in tasks:
            glob = mim_l1(net.head("mim", h2[-1]), views[:, 1], batch["global_mask"])
            loc = mim_l1(net.head("mim", h4[-1]), local, batch["local_mask"])
            losses["mim"], valid["mim"] = glob + loc, one

        total = self.balancer(losses, valid)
        return total, {k: v.detach() for k, v in losses.items()}, valid
