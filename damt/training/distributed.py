"""Process-group setup for ``torchrun`` (NCCL on GPUs, gloo on CPU) and collective helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(use_cuda: bool, timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group ``torchrun`` describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not is_distributed():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(seconds=timeout_s),
            device_id=device if use_cuda else None,
        )
    return DistEnv(rank, world, local_rank, local_world, device)


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum``, ``min`` or ``max``); a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(t, op=_REDUCE_OPS[op])
    return t


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` (N_r, ...) over ranks, differentiably; also return this rank's offset.

    Ranks may hold different N_r (the last batch of an epoch): rows are padded to the largest
    N_r for the collective and cut back afterwards. Gradients flow back to every rank's rows:
    the functional ``all_gather_single`` (what torch 2.13 names as the replacement of the
    deprecated ``torch.distributed.nn.functional.all_gather``) is differentiable, its backward
    a sum reduce-scatter, i.e. each rank's rows get the sum of the gradients all ranks computed
    for them, as before. Integer tensors (subject indices) are gathered the same way.
    """
    if not is_distributed():
        return x, 0
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = torch.nn.functional.pad(x, (0, 0) * (x.ndim - 1) + (0, longest - x.shape[0]))
    # (world × longest, ...): the ranks' padded rows one after the other.
    gathered = funcol.all_gather_single(padded.contiguous(), 0, dist.group.WORLD)
    parts = [gathered[r * longest : r * longest + c] for r, c in enumerate(counts)]
    return torch.cat(parts), sum(counts[: dist.get_rank()])
