"""Per-iteration schedules (as in DINO): linear warmup, then a cosine from start to end value."""

from __future__ import annotations

import numpy as np
import torch


def cosine_schedule(
    start: float,
    end: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """Values for each of ``epochs × iters_per_epoch`` iterations.

    The first ``warmup_epochs`` rise linearly from ``warmup_start`` to ``start``; the rest follow
    half a cosine from ``start`` to ``end`` (``end`` is reached at the last iteration).
    """
    total = epochs * iters_per_epoch
    n_warm = warmup_epochs * iters_per_epoch
    if not 0 <= n_warm < total:
        raise ValueError(f"warmup of {warmup_epochs} epochs does not fit {epochs} epochs")
    warm = np.linspace(warmup_start, start, n_warm, endpoint=False)
    t = np.arange(total - n_warm) / max(total - n_warm - 1, 1)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * t))
    return np.concatenate([warm, cosine])


def momentum_schedule(start: float, epochs: int, iters_per_epoch: int, cosine: bool) -> np.ndarray:
    """The EMA teacher's momentum at each iteration: DINO's half cosine from ``start`` to 1
    (``cosine``, Caron et al. 2021), or ``start`` throughout (``pretrain.ema`` alone)."""
    if cosine:
        return cosine_schedule(start, 1.0, epochs, iters_per_epoch)
    return np.full(epochs * iters_per_epoch, start)


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set one step's learning rate and weight decay on the network's parameter groups.

    Groups marked ``balancer`` (the task weights, see ``damt.training.step.param_groups``) keep
    their constant learning rate and zero weight decay; groups without ``apply_wd_schedule``
    keep their weight decay.
    """
    for group in optimizer.param_groups:
        if group.get("balancer"):
            continue
        # Python floats: numpy scalars in the optimizer state would not load weights_only.
        group["lr"] = float(lr)
        if group.get("apply_wd_schedule"):
            group["weight_decay"] = float(weight_decay)
