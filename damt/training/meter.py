"""An epoch's metric sums on the device, reduced over ranks once per epoch, and the stop
decision that every rank takes at the same step (both collectives of the training loop)."""

from __future__ import annotations

import signal

import torch

from damt.training.distributed import DistEnv, all_reduce


class EpochMeter:
    """Named per-epoch sums on the device, reduced over ranks in one all-reduce at the end.

    Values are accumulated as float64 tensors without host syncs. Every rank adds the same names
    with the same shapes in the same steps (a skipped step is skipped on all ranks: the skip
    decision is all-reduced), so the flattened sums line up across ranks.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        """Add ``value`` (a scalar or a tensor of fixed shape) to the sum called ``name``."""
        value = torch.as_tensor(value, device=self.device).detach().double()
        if name in self.sums:
            self.sums[name] += value
        else:
            self.sums[name] = value.clone()

    def reduce(self) -> dict[str, torch.Tensor]:
        """The sums over all ranks (CPU tensors), after one all-reduce of their concatenation."""
        names = sorted(self.sums)
        if not names:
            return {}
        flat = torch.cat([self.sums[n].reshape(-1) for n in names])
        all_reduce(flat)
        out, offset = {}, 0
        for name in names:
            size = self.sums[name].numel()
            out[name] = flat[offset : offset + size].reshape(self.sums[name].shape).cpu()
            offset += size
        return out

    def resume(self, sums: dict[str, torch.Tensor], keep: bool) -> None:
        """Start from the reduced sums of a stopped epoch: their values on one rank (``keep``),
        zeros of the same names and shapes on the others, so the next reduction counts them
        once."""
        self.sums = {
            name: (value if keep else torch.zeros_like(value)).to(self.device, torch.float64)
            for name, value in sums.items()
        }


def agreed_stop(received: int | None, env: DistEnv) -> str | None:
    """The name of the stop signal once any rank has received one (``received``: this rank's
    signal number), the same answer on every rank, so that all of them stop at the same step:
    the signal numbers are all-reduced (a collective: every rank calls it at the same step)."""
    if env.world_size > 1:
        flag = torch.tensor([float(received or 0)], device=env.device)
        received = int(all_reduce(flag, "max").item())
    return signal.Signals(received).name if received else None


def mean_of(sums: dict[str, torch.Tensor], total: str, count: str) -> float | None:
    """``sums[total] / sums[count]``; None where the count is 0 or missing."""
    # None, not NaN: metrics.jsonl stays valid JSON when a task had no valid step in an epoch.
    n = float(sums[count]) if count in sums else 0.0
    return float(sums[total]) / n if n else None
