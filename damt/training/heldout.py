"""The pretext tasks' learning signals on held-out subjects (``eval_signal/*``, ``eval_chance/*``).

The epoch's signals (:mod:`damt.training.signals`) are running means over the training batches:
they show what the network learns on the subjects it trains on. The same signals on views of the
held-out evaluation subjects show whether that carries over to subjects it never saw, and a gap
between the two shows over-fitting. At every evaluation (``pretrain.eval_every``) the objective
scores the same views of at most ``pretrain.eval_subjects`` held-out subjects: drawn once from
the run's seed (epoch 0 of the views' random stream), without augmentation, in eval mode (no
drop path; the contrastive queue and DINO's centre are left as they are). Under DDP each rank
scores its share; the sums are reduced as an epoch's are.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch.utils.data import DataLoader, DistributedSampler

from damt.training.data import PretrainDataset
from damt.training.distributed import DistEnv
from damt.training.evaluate import capped
from damt.training.inputs import TrainInputs
from damt.training.meter import EpochMeter
from damt.training.objective import PretrainObjective
from damt.training.settings import TrainSettings
from damt.training.signals import epoch_signals
from damt.training.step import AUTOCAST_DTYPES

log = logging.getLogger("damt.train")


def held_out_loader(
    inputs: TrainInputs, settings: TrainSettings, env: DistEnv
) -> DataLoader | None:
    """The held-out subjects' views (every rank its share, the same number of batches on each),
    or None (logged) when the manifest holds nobody out."""
    data = inputs.load(settings.tasks, holdout=True)
    if not data.subjects:
        log.info("held-out learning signals are off: the manifest holds no held-out subject")
        return None
    data = data.select(capped(data.subjects, settings.eval_subjects))
    no_augment = dataclasses.replace(
        settings.augment, elastic_prob=0.0, bias_field_prob=0.0, contrast_prob=0.0, noise_prob=0.0
    )
    dataset = PretrainDataset(data, settings.views, settings.seed, no_augment)
    # Padding to a multiple of the world size repeats a subject or two (DistributedSampler).
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=False)
    return DataLoader(dataset, batch_size=settings.batch_size_per_gpu, sampler=sampler)


@torch.no_grad()
def held_out_signals(
    objective: PretrainObjective, loader: DataLoader, env: DistEnv, precision: str
) -> dict[str, float | None]:
    """``eval_signal/<name>`` and ``eval_chance/<name>`` of each task on ``loader``'s views."""
    dtype = AUTOCAST_DTYPES[precision]
    meter = EpochMeter(env.device)
    was_training = objective.training
    objective.eval()
    try:
        for batch in loader:
            batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(env.device.type, dtype=dtype, enabled=dtype is not None):
                _, _, _, stats = objective(batch)
            for name, value in stats.items():
                meter.add(name, value)
    finally:
        objective.train(was_training)
    spec = objective.network.spec
    signals = epoch_signals(meter.reduce(), spec.tasks, spec.n_rotations)
    return {f"eval_{key}": value for key, value in signals.items()}
