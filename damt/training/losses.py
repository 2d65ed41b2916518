"""Task losses, masking of missing targets, and the weighting of the tasks against each other."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class ContrastiveLogits:
    """NT-Xent's logits of this rank's anchors against the global batch (and queue), masked."""

    logits: torch.Tensor  # (2 N_r, 2 N + Q): -inf at the anchor itself and at its duplicates
    positive: torch.Tensor  # (2 N_r,) column of each anchor's positive
    defined: torch.Tensor  # 0-d bool: at least two subjects among the candidates
    keys: torch.Tensor  # (2 N, D) the global batch's normalised embeddings, detached
    key_ids: torch.Tensor  # (2 N,) their subjects


def contrastive_logits(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    ids: torch.Tensor | None = None,
    queue: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ContrastiveLogits:
    """Cosine similarities / temperature of this rank's 2N_r embeddings against all 2N of all
    DDP ranks (gathered differentiably), and against a queue of earlier embeddings.

    ``ids`` (N_r,): the subject of each pair. ``DistributedSampler`` pads an epoch with repeated
    subjects, and views are seeded by (seed, epoch, index), so a repeated subject gives the same
    embeddings on another rank: with the ids gathered along with the embeddings, every
    candidate of the anchor's own subject other than its positive is masked out of the
    negatives. Without ids every pair is its own subject.

    ``queue``: (Q, D) normalised embeddings and (Q,) their subjects (-1: an empty slot), appended
    as further negatives (``pretrain.contrastive.queue_size``); entries of the anchor's own
    subject (its views of an earlier epoch) and empty slots are masked like duplicates.
    """
    z1 = F.normalize(z1.float(), dim=1)  # (N_r, D)
    z2 = F.normalize(z2.float(), dim=1)
    all1, offset = gather_with_grad(z1)  # (N, D)
    all2, _ = gather_with_grad(z2)
    n_local, n = z1.shape[0], all1.shape[0]
    if ids is None:  # every pair its own subject: its global row
        ids = torch.arange(n_local, device=z1.device) + offset
        all_ids = torch.arange(n, device=z1.device)
    else:
        all_ids, _ = gather_with_grad(ids)  # (N,)
    candidates = torch.cat([all1, all2])
    candidate_ids = torch.cat([all_ids, all_ids])
    if queue is not None:
        candidates = torch.cat([candidates, queue[0]])
        candidate_ids = torch.cat([candidate_ids, queue[1]])
    logits = torch.cat([z1, z2]) @ candidates.T / temperature  # (2 N_r, 2 N + Q)
    own = torch.arange(n_local, device=z1.device) + offset
    positive = torch.cat([own + n, own])  # (2 N_r,)
    # Same subject as the anchor (itself, its duplicates' two views, its positive) ...
    same = torch.cat([ids, ids])[:, None] == candidate_ids[None, :]
    # ... all masked except the positive; empty queue slots are masked too.
    same |= (candidate_ids < 0)[None, :]
    same[torch.arange(2 * n_local, device=z1.device), positive] = False
    logits = logits.masked_fill(same, float("-inf"))
    # Two subjects or more among the candidates (no host sync).
    defined = ((candidate_ids >= 0) & (candidate_ids != all_ids[0])).any()
    return ContrastiveLogits(
        logits, positive, defined, torch.cat([all1, all2]).detach(), torch.cat([all_ids, all_ids])
    )


@dataclass
class VICRegTerms:
    """VICReg's three terms, the weighted loss, and whether variance and covariance are defined."""

    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor
    loss: torch.Tensor
    defined: torch.Tensor  # 0-d bool: the global batch holds at least two samples


def vicreg_terms(
    z1: torch.Tensor,
    z2: torch.Tensor,
    invariance: float = 25.0,
    variance: float = 25.0,
    covariance: float = 1.0,
    target: float = 1.0,
    eps: float = 1e-4,
) -> VICRegTerms:
    """VICReg (Bardes et al. 2022, ICLR) between the projections ``z1``, ``z2`` (N_r, D) of the
    two views, as the official implementation computes it:

    - invariance: mean squared error between the pairs of this rank (DDP averages it);
    - variance: mean over dimensions of relu(γ - sqrt(Var + ε)), per view, halved and summed;
    - covariance: the squared off-diagonal entries of each view's covariance, summed / D.

    Variance and covariance are taken over the global batch: the projections are gathered over
    DDP ranks differentiably (the official ``FullGatherLayer``; ``gather_with_grad`` sums each
    rank's gradient for the rows, so with DDP's averaging the gradient is that of the global
    batch's term). Unbiased (N - 1) estimates; a global batch of one sample gives 0 for both
    (instead of NaN) and ``defined`` False.
    """
    z1, z2 = z1.float(), z2.float()
    inv = F.mse_loss(z1, z2)
    x, _ = gather_with_grad(z1)
    y, _ = gather_with_grad(z2)
    n, d = x.shape
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    denom = max(n - 1, 1)
    std_x = torch.sqrt(x.pow(2).sum(0) / denom + eps)
    std_y = torch.sqrt(y.pow(2).sum(0) / denom + eps)
    var = F.relu(target - std_x).mean() / 2 + F.relu(target - std_y).mean() / 2
    off = ~torch.eye(d, dtype=torch.bool, device=x.device)
    cov_x = (x.T @ x) / denom
    cov_y = (y.T @ y) / denom
    cov = cov_x[off].pow(2).sum() / d + cov_y[off].pow(2).sum() / d
    loss = invariance * inv + variance * var + covariance * cov
    return VICRegTerms(inv, var, cov, loss, torch.tensor(n > 1, device=x.device))


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """DINO's loss (Caron et al. 2021, ICCV): the cross-entropy H(P_t, P_s) averaged over the
    pairs of a teacher view and a different student view.

    ``student``: the student's prototype scores of each view (B, K): the global views first,
    then the local views; ``teacher``: the teacher's of the global views, in the same order.
    The teacher is centred (``center`` (1, K) subtracted) and sharpened by its lower
    temperature; the student is divided by its own. The teacher gets no gradient.
    """
    targets = [
        F.softmax((t.float() - center) / teacher_temperature, dim=-1).detach() for t in teacher
    ]
    logps = [F.log_softmax(s.float() / student_temperature, dim=-1) for s in student]
    total, pairs = 0.0, 0
    for i, target in enumerate(targets):
        for j, logp in enumerate(logps):
            if i == j:  # the same view
                continue
            total = total + (-target * logp).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent between paired embeddings, over the global batch of all DDP ranks.

    Works for any batch size, including a short last batch. The anchors are this rank's 2N_r
    embeddings; the candidates are all 2N embeddings of all ranks, less the anchor's own subject
    (see :func:`contrastive_logits`). Returns the loss and whether it is defined (False with a
    single subject in the global batch: nothing to contrast against).
    """
    c = contrastive_logits(z1, z2, temperature, ids)
    return F.cross_entropy(c.logits, c.positive), c.defined


# Which likelihood each task's loss stands for (Kendall et al. 2018).
CLASSIFICATION_TASKS = frozenset({"rotation", "location", "contrastive", "atlas"})
REGRESSION_TASKS = frozenset({"morphometry", "radiomics", "mim"})

# The original research code's fixed task weights (balancing: fixed).
FIXED_WEIGHTS = {
    "rotation": 1.0,
    "location": 1.0,
    "contrastive": 1.0,
    "atlas": 0.5,
    "morphometry": 5.0,
    "radiomics": 5.0,
    "mim": 1.0,
}


class UncertaintyWeighting(nn.Module):
    """Kendall et al. (2018): each task's loss as the negative log-likelihood of a model with a
    learnable noise scale, one parameter s_t per task; its weight on L_t is exp(-s_t).

    - Classification (rotation, location, contrastive, atlas: cross-entropies, i.e. softmax
      likelihoods): eq. 10, a softmax scaled by 1/σ², gives (1/σ²) L + log σ; with s = log σ²
      the term is ``exp(-s) · L + s / 2``, smallest at exp(-s) = 1 / (2 L).
    - Regression (morphometry, radiomics, MIM): their losses are L1, the negative
      log-likelihood of a Laplace distribution with scale b, |y - f| / b + log b; with
      s = log b the term is ``exp(-s) · L + s``, smallest at exp(-s) = 1 / L. (Eq. 7's
      Gaussian form, 1/(2σ²) L + log σ, belongs to an L2 loss, which no task here uses.)

    A task without valid samples in a batch (e.g. no morphometry) drops out of that step's sum
    entirely; otherwise its s_t would drift towards -inf on zero losses.
    """

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__()
        unknown = set(tasks) - CLASSIFICATION_TASKS - REGRESSION_TASKS
        if unknown:
            raise ValueError(f"no likelihood form for tasks {sorted(unknown)}")
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in tasks})
        # Factor of s_t in the task's term: log σ = s/2 (classification), log b = s (Laplace).
        self.log_factor = {t: 0.5 if t in CLASSIFICATION_TASKS else 1.0 for t in tasks}

    def forward(
        self, losses: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        total = 0.0
        for task, loss in losses.items():
            s = self.log_vars[task]
            term = torch.exp(-s) * loss + self.log_factor[task] * s
            total = total + valid[task].float() * term
        return total

    def weights(self) -> dict[str, float]:
        """Current task weights exp(-s_t), the factors of the losses in the total."""
        return {t: float(torch.exp(-s.detach())) for t, s in self.log_vars.items()}

    def balance_point(self, task: str, loss: float) -> float:
        """The weight that minimises the task's term at a constant loss ``loss``."""
        return self.log_factor[task] / loss


class EqualWeighting(nn.Module):
    """Plain sum of the task losses (the ablation of uncertainty weighting)."""

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.tasks = tasks

    def forward(
        self, losses: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return sum(valid[t].float() * loss for t, loss in losses.items())

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.tasks, 1.0)


class FixedWeighting(nn.Module):
    """The original research code's hand-set weights (``FIXED_WEIGHTS``), for comparison."""

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.task_weights = {t: FIXED_WEIGHTS[t] for t in tasks}

    def forward(
        self, losses: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return sum(self.task_weights[t] * valid[t].float() * loss for t, loss in losses.items())

    def weights(self) -> dict[str, float]:
        return dict(self.task_weights)


BALANCINGS = {
    "uncertainty": UncertaintyWeighting,
    "equal": EqualWeighting,
    "fixed": FixedWeighting,
}


def make_balancer(balancing: str, tasks: tuple[str, ...]) -> nn.Module:
    """The task weighting ``balancing`` (``pretrain.balancing``) over ``tasks``."""
    if balancing not in BALANCINGS:
        raise ValueError(f"unknown loss balancing {balancing!r}; known: {sorted(BALANCINGS)}")
    return BALANCINGS[balancing](tasks)
