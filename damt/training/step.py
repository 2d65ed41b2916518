"""One optimisation step: precision, AdamW parameter groups, forward/backward/clip/update.

Shared by the training loop and ``bench/train.py``, so the benchmark times the trainer's step.
"""

from __future__ import annotations

import math
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
    """Forward under autocast, backward, clip, step; skip the update when anything is non-finite.

    Under DDP every rank takes the same branch: the loss check is all-reduced, and the gradient
    norm is computed from gradients DDP has already averaged.
    """
    dtype = AUTOCAST_DTYPES[precision]
    device = next(iter(batch.values())).device
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        total, losses, valid, stats = model(batch)
    optimizer.zero_grad(set_to_none=True)
    finite = all_reduce(torch.isfinite(total.detach()).float().reshape(1), "min")
    if finite.item() != 1.0:
        return StepResult(False, total.detach(), losses, valid, None, stats)
    scaler.scale(total).backward()
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
    return StepResult(applied, total.detach(), losses, valid, norm.detach(), stats)
