"""One forward pass of the seven tasks on a batch of views: the module DDP wraps.

The task weighting lives inside this module so that its log-variances are averaged across ranks
by DDP like every other parameter. So does the state of the contrastive methods and the EMA
(``damt.training.teacher``), so the objective's ``state_dict`` checkpoints all of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from damt.config import schema_defaults
from damt.model.network import DAMTNetwork
from damt.training import signals
from damt.training.losses import (
    contrastive_logits,
    dino_loss,
    make_balancer,
    masked_l1,
    mim_l1,
    vicreg_terms,
)
from damt.training.settings import ContrastiveSettings, EmaSettings
from damt.training.teacher import Center, EmaTeacher, NegativeQueue, Prototypes

# Which encoder passes each task needs.
_GLOBAL_PLAIN = {"rotation", "contrastive", "atlas", "morphometry", "radiomics"}
_LOCAL_PLAIN = {"rotation", "location", "atlas"}


class PretrainObjective(nn.Module):
    """Network + task weighting; ``forward(batch)`` returns the total loss, the per-task terms
    and the per-step sums of the learning signals (``damt.training.signals``) of the active
    tasks (all of the network's, unless a curriculum phase chose some: :meth:`set_active`).

    ``contrastive`` picks the contrastive task's loss (``pretrain.contrastive``); ``ema`` keeps
    an EMA of the encoder (``pretrain.ema``). With ``dino`` the objective holds the student's
    prototype layer, the EMA teacher and the centre; with a queue, the queue; with the EMA (or
    dino) :meth:`update_teacher` is called after every applied step.
    """

    def __init__(
        self,
        network: DAMTNetwork,
        balancing: str,
        temperature: float,
        contrastive: ContrastiveSettings | None = None,
        ema: EmaSettings | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.temperature = temperature
        if contrastive is None or ema is None:  # the schema's settings for what is not given
            defaults = schema_defaults("pretrain")
            contrastive = contrastive or ContrastiveSettings.from_pretrain(defaults)
            ema = ema or EmaSettings.from_pretrain(defaults)
        self.contrastive, self.ema = contrastive, ema
        self.balancer: nn.Module = make_balancer(balancing, network.spec.tasks)
        self.active: tuple[str, ...] = network.spec.tasks
        c, spec = self.contrastive, network.spec
        self.method = c.method if "contrastive" in spec.tasks else None
        if self.method == "dino":
            self.prototypes = Prototypes(spec.contrastive_dim, c.dino.out_dim)
            self.center = Center(c.dino.out_dim, c.dino.center_momentum)
            self.teacher = EmaTeacher(
                network.encoder, network.heads["contrastive"], self.prototypes
            )
        elif self.ema.enabled:
            self.teacher = EmaTeacher(network.encoder)
        else:
            self.teacher = None
        if self.method == "ntxent" and c.queue_size:
            self.queue = NegativeQueue(c.queue_size, spec.contrastive_dim)
        else:
            self.queue = None

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task`` uses: its head, its uncertainty weight, for mim the
        encoder's mask token and for dino's contrastive task its prototypes (every task runs
        the whole encoder)."""
        params = list(self.network.heads[task].parameters())
        if task == "contrastive" and self.method == "dino":
            params += list(self.prototypes.parameters())
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

    def update_teacher(self, momentum: float) -> None:
        """One EMA step of the teacher towards the student (after an applied optimiser step)."""
        if self.teacher is None:
            return
        student = [self.network.encoder]
        if self.method == "dino":
            student += [self.network.heads["contrastive"], self.prototypes]
        self.teacher.update(student, momentum)

    def exported_encoder(self) -> nn.Module:
        """The encoder ``encoder.safetensors`` holds: the student, or dino's teacher."""
        if self.contrastive.export == "teacher" and self.method == "dino":
            return self.teacher.encoder
        return self.network.encoder

    def ema_encoder(self) -> nn.Module | None:
        """The EMA encoder exported as ``encoder_ema.safetensors`` (``pretrain.ema``), or None."""
        return self.teacher.encoder if self.ema.enabled else None

    def _contrastive(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        local: torch.Tensor | None,
        views: torch.Tensor,
        ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The contrastive task's loss, validity and signal sums for the projections ``z1``,
        ``z2`` of the global views (``local``: of the local view, dino only)."""
        c = self.contrastive
        if self.method == "ntxent":
            queue = self.queue.entries() if self.queue is not None else None
            logits = contrastive_logits(z1, z2, self.temperature, ids, queue)
            # Eval mode (the held-out signals) scores the views and leaves the state alone.
            if self.queue is not None and self.training:
                self.queue.push(logits.keys, logits.key_ids)
            loss, defined = F.cross_entropy(logits.logits, logits.positive), logits.defined
        elif self.method == "vicreg":
            v = c.vicreg
            terms = vicreg_terms(
                z1, z2, v.invariance, v.variance, v.covariance, v.variance_target, v.eps
            )
            loss, defined = terms.loss, terms.defined
            # Without negatives the logits below serve the learning signal only.
            logits = contrastive_logits(z1.detach(), z2.detach(), 1.0, ids)
        else:
            d = c.dino
            b = views.shape[0]
            student = [self.prototypes(z) for z in (z1, z2, local)]
            with torch.no_grad():
                teacher = self.teacher.scores(views.transpose(0, 1).flatten(0, 1))  # (2B, K)
            loss = dino_loss(
                student,
                [teacher[:b], teacher[b:]],
                self.center.center,
                d.student_temperature,
                d.teacher_temperature,
            )
            if self.training:
                self.center.update(teacher)
            defined = torch.ones((), dtype=torch.bool, device=views.device)
            logits = contrastive_logits(z1.detach(), z2.detach(), 1.0, ids)
        return loss, defined, signals.step_contrastive(logits.logits.detach(), logits.positive)

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
        if tasks & _LOCAL_PLAIN or self.method == "dino":
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
            losses["contrastive"], valid["contrastive"], step_stats = self._contrastive(
                net.head("contrastive", cls1),
                net.head("contrastive", cls2),
                net.head("contrastive", cls3) if self.method == "dino" else None,
                views,
                batch.get("index"),
            )
            stats |= step_stats
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
