"""One optimisation step: precision, AdamW parameter groups, forward/backward/clip/update.

Shared by the training loop and ``bench/train.py``, so the benchmark times the trainer's step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from damt.training.distributed import all_reduce
from damt.training.objective import PretrainObjective

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class StepResult:
    """Outcome of one optimisation step."""

    applied: bool  # False: non-finite loss or gradient, the parameters did not change
    total: torch.Tensor
    losses: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    grad_norm: torch.Tensor | None  # of the network's parameters (the balancer's not included)
    stats: dict[str, torch.Tensor]  # the step's learning-signal sums (damt.training.signals)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → bf16 on GPUs that have it, fp16 (with loss scaling) on older GPUs, fp32 on CPU.

    Half precision is refused on the CPU. fp16: no fast kernels, and Swin attention overflows in
    fp16. bf16: oneDNN's bf16 Conv3d weight gradient (torch 2.13 CPU) intermittently returns
    non-finite values for the decoders' small deep feature maps, so about one step in four is
    skipped; without oneDNN a bf16 step is ~9x slower than fp32 (bench/RESULTS.md).
    """
    if device.type == "cpu":
        if name in ("fp16", "bf16"):
            raise ValueError(
                f"pretrain.precision {name} needs a GPU; use fp32 (or auto) on the CPU"
                + (
                    " (CPU bf16 Conv3d gradients are intermittently non-finite in torch's oneDNN)"
                    if name == "bf16"
                    else ""
                )
            )
        return "fp32"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("pretrain.precision bf16: this GPU does not support bfloat16")
    return name


# Learning rate of the task balancer's parameters (pretrain.balancer_lr's default): constant.
# Measured in bench/RESULTS.md ("Task balancing"): Adam moves each log-variance by about this
# much per step, so balance points |log L| <= 3 are reached within a few hundred steps, and at
# the balance the weights fluctuate by a few per cent with batch-of-two losses.
BALANCER_LR = 0.01


def param_groups(objective: PretrainObjective, balancer_lr: float = BALANCER_LR) -> list[dict]:
    """AdamW groups. Weight decay (on its schedule) applies to weight matrices and kernels only;
    biases, norms, the mask token and Swin's relative position tables are not decayed (as in
    DINO and Swin).

    The task balancer's parameters (uncertainty weighting's log-variances) have a group of their
    own (``balancer: True``): a constant learning rate ``balancer_lr``, no warmup, no cosine
    decay, no weight decay, no scaling with the batch, and no part in gradient clipping. They
    are a handful of scalars whose balance points lie at log L (-3 to +1.5 here); on the
    network's schedule (peak base_lr × batch / 256, ~1e-5 to 4e-4) they would barely move.
    """
    decay, no_decay, balancer = [], [], []
    for name, p in objective.named_parameters():
        if not p.requires_grad:  # the EMA teacher: moved by update_teacher, not the optimiser
            continue
        if name.startswith("balancer."):
            balancer.append(p)
        elif p.ndim <= 1 or "relative_position_bias_table" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "apply_wd_schedule": True, "balancer": False},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd_schedule": False, "balancer": False},
    ]
    if balancer:
        groups.append(
            {
                "params": balancer,
                "lr": balancer_lr,
                "weight_decay": 0.0,
                "apply_wd_schedule": False,
                "balancer": True,
            }
        )
    return groups


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: dict[str, torch.Tensor],
    precision: str,
    clip_grad: float,
) -> StepResult:
    """One optimizer step on one batch (:func:`accumulated_step` with a single micro-batch)."""
    return accumulated_step(model, optimizer, scaler, [batch], precision, clip_grad)


def accumulated_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Sequence[dict[str, torch.Tensor]],
    precision: str,
    clip_grad: float,
    no_sync: Callable[[], AbstractContextManager] | None = None,
    device: torch.device | None = None,
) -> StepResult:
    """One optimizer step over ``batches`` (micro-batches, ``pretrain.accumulate_steps``):
    forward under autocast and backward of each, clip, step; skip the update when anything is
    non-finite.

    Each micro-batch's total is divided by their number, so the accumulated gradient is that of
    the mean of the micro-batches' losses: for equal micro-batches, the gradient of the large
    batch for every loss that is a mean over samples (all but the contrastive one, whose
    negatives are those of its micro-batch). ``no_sync`` (DDP's) wraps every micro-batch but
    the last, so the gradients are all-reduced once. ``device``: where the batches go (each
    just before its forward pass); None leaves them where they are.

    Under DDP every rank takes the same branch: the loss check is all-reduced, and the gradient
    norm is computed from gradients DDP has already averaged. The returned losses are the means
    over the micro-batches where each task was defined; the signal sums are summed.
    """
    dtype = AUTOCAST_DTYPES[precision]
    n = len(batches)
    optimizer.zero_grad(set_to_none=True)
    total_sum: torch.Tensor | None = None
    loss_sums: dict[str, torch.Tensor] = {}
    valid_counts: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(batches):
        if device is not None:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        last = i == n - 1
        with nullcontext() if last or no_sync is None else no_sync():
            with torch.autocast(_device(batch).type, dtype=dtype, enabled=dtype is not None):
                total, losses, valid, step_stats = model(batch)
            finite = all_reduce(torch.isfinite(total.detach()).float().reshape(1), "min")
            if finite.item() != 1.0:
                return StepResult(False, total.detach(), losses, valid, None, step_stats)
            scaler.scale(total / n).backward()
        total_sum = total.detach() if total_sum is None else total_sum + total.detach()
        for task, loss in losses.items():
            v = valid[task].float()
            loss_sums[task] = loss_sums.get(task, 0.0) + loss * v
            valid_counts[task] = valid_counts.get(task, 0.0) + v
        for key, value in step_stats.items():
            stats[key] = stats[key] + value if key in stats else value
    scaler.unscale_(optimizer)
    # The network's gradients only: a balancer parameter's gradient, c - w·L (c = 1/2 or 1), is
    # about as large as its task's loss and would dominate the norm, so clipping would scale the
    # network's step by the task losses instead of by its own gradients.
    params = [
        p for group in optimizer.param_groups if not group.get("balancer") for p in group["params"]
    ]
    norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else math.inf)
    applied = bool(torch.isfinite(norm))
    if applied:
        scaler.step(optimizer)
    scaler.update()
    losses = {t: loss_sums[t] / valid_counts[t].clamp_min(1) for t in loss_sums}
    valid = {t: valid_counts[t] > 0 for t in valid_counts}
    return StepResult(applied, total_sum / n, losses, valid, norm.detach(), stats)


def _device(batch: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(batch.values())).device
