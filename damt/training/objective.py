"""One forward pass of the seven tasks on a batch of views: the module DDP wraps.

The task weighting lives inside this module so that its log-variances are averaged across ranks
by DDP like every other parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from damt.model.network import DAMTNetwork
from damt.training import signals
from damt.training.losses import contrastive_logits, make_balancer, masked_l1, mim_l1

# Which encoder passes each task needs.
_GLOBAL_PLAIN = {"rotation", "contrastive", "atlas", "morphometry", "radiomics"}
_LOCAL_PLAIN = {"rotation", "location", "atlas"}


class PretrainObjective(nn.Module):
    """Network + task weighting; ``forward(batch)`` returns the total loss, the per-task terms
    and the per-step sums of the learning signals (``damt.training.signals``) of the active
    tasks (all of the network's, unless a curriculum phase chose some: :meth:`set_active`).
    """

    def __init__(self, network: DAMTNetwork, balancing: str, temperature: float) -> None:
        super().__init__()
        self.network = network
        self.temperature = temperature
        self.balancer: nn.Module = make_balancer(balancing, network.spec.tasks)
        self.active: tuple[str, ...] = network.spec.tasks

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task`` uses: its head, its uncertainty weight and, for mim, the
        encoder's mask token (every task runs the whole encoder)."""
        params = list(self.network.heads[task].parameters())
        log_vars = getattr(self.balancer, "log_vars", None)
        if log_vars is not None:
            params.append(log_vars[task])
        if task == "mim":
            params.append(self.network.encoder.mask_token)
        return params

    def set_active(self, tasks: tuple[str, ...]) -> None:
        """Train only ``tasks`` (a curriculum phase): the others add no loss, and their own
        parameters stop requiring gradients, so they get none (AdamW then leaves them alone,
        weight decay included) and a DDP wrapper built afterwards does not expect them."""
        unknown = set(tasks) - set(self.network.spec.tasks)
        if unknown:
            raise ValueError(f"tasks {sorted(unknown)} have no head in this network")
        self.active = tuple(t for t in self.network.spec.tasks if t in tasks)
        for task in self.network.spec.tasks:
            for p in self.task_parameters(task):
                p.requires_grad_(task in self.active)

    def forward(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[
        torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]
    ]:
        """Total loss, per-task losses and validity flags (0-d tensors), signal sums."""
        net, spec = self.network, self.network.spec
        tasks = set(self.active)
        views = batch["global_image"]  # (B, 2, 1, G, G, G)
        local = batch["local_image"]  # (B, 1, L, L, L)
        one = torch.ones((), device=views.device)
        losses: dict[str, torch.Tensor] = {}
        valid: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}

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
            logits = net.head("rotation", torch.cat([cls1, cls3])).float()  # (2B, 10)
            target = torch.cat([batch["global_rotation"][:, 0], batch["local_rotation"]])
            losses["rotation"], valid["rotation"] = F.cross_entropy(logits, target), one
            stats |= signals.step_classification("rotation", logits, target, spec.n_rotations)
        if "location" in tasks:
            logits = net.head("location", cls3).float()  # (B, n_locations)
            losses["location"] = F.cross_entropy(logits, batch["location"])
            valid["location"] = one
            stats |= signals.step_classification(
                "location", logits, batch["location"], spec.n_locations
            )
        if "contrastive" in tasks:
            c = contrastive_logits(
                net.head("contrastive", cls1),
                net.head("contrastive", cls2),
                self.temperature,
                batch.get("index"),
            )
            losses["contrastive"] = F.cross_entropy(c.logits, c.positive)
            valid["contrastive"] = c.defined
            stats |= signals.step_contrastive(c.logits.detach(), c.positive)
        if "atlas" in tasks:
            glob_logits = net.head("atlas", h1).float()  # (B, K, G, G, G)
            loc_logits = net.head("atlas", h3).float()  # (B, K, L, L, L)
            glob_target = batch["global_atlas"].long()
            loc_target = batch["local_atlas"].long()
            glob = F.cross_entropy(glob_logits, glob_target)
            loc = F.cross_entropy(loc_logits, loc_target)
            losses["atlas"], valid["atlas"] = 0.5 * (glob + loc), one
            for logits, target in ((glob_logits, glob_target), (loc_logits, loc_target)):
                for key, value in signals.step_atlas(logits.detach(), target).items():
                    stats[key] = stats[key] + value if key in stats else value
        for task in ("morphometry", "radiomics"):
            if task in tasks:
                pred = net.head(task, h1[-1])  # (B, F)
                loss, count = masked_l1(pred, batch[task])
                losses[task], valid[task] = loss, count > 0
                stats |= signals.step_regression(task, pred.detach(), batch[task])
        if "mim" in tasks:
            glob = mim_l1(net.head("mim", h2[-1]), views[:, 1], batch["global_mask"])
            loc = mim_l1(net.head("mim", h4[-1]), local, batch["local_mask"])
            losses["mim"], valid["mim"] = glob + loc, one
            with torch.no_grad():
                stats["mim/l1"] = losses["mim"].detach()
                stats["mim/baseline_l1"] = signals.mean_baseline_l1(
                    views[:, 1], batch["global_mask"]
                ) + signals.mean_baseline_l1(local, batch["local_mask"])

        total = self.balancer(losses, valid)
        return total, {k: v.detach() for k, v in losses.items()}, valid, stats
