"""The pretrain rule's Snakemake resources, and the GPUs a job's resources grant."""

from __future__ import annotations

import re
from collections.abc import Mapping

from damt.training.settings import TrainSettings


def pretrain_resources(settings: TrainSettings) -> dict:
    """The pretrain rule's resources.

    One node: ``gpu`` (Snakemake's ``--resources gpu=N`` limit; the SLURM plugin's ``--gpus``).
    Several: what makes snakemake-executor-plugin-slurm ask for ``nodes`` nodes with one task
    and ``gpus`` GPUs each, and run the job's script once, in the batch step on the first node,
    where :func:`launch` starts the per-node launchers itself with ``srun``:

    - ``nodes`` becomes ``--nodes=N``; ``mpi`` (the plugin's launch mode for multi-task jobs)
      runs the job without the plugin's own one-task ``srun`` around it, and ``tasks`` becomes
      ``--ntasks=N``: one task per node;
    - ``gres: gpu:G`` becomes ``--gres=gpu:G``, which SLURM counts per node (``--gpus``, from
      ``gpu``, counts per job);
    - ``tasks_per_gpu: 0`` keeps the plugin from turning ``tasks`` into ``--ntasks-per-gpu``
      for a GPU job (its issues #316 and #459: a rule with ``gpu=2`` ran its script twice).
    """
    nodes, gpus = settings.nodes, settings.gpus
    if nodes == 1:
        return {"gpu": gpus}
    resources = {"nodes": nodes, "tasks": nodes, "mpi": "srun"}
    if gpus:
        resources |= {"gres": f"gpu:{gpus}", "tasks_per_gpu": 0}
    return resources


def granted_gpus(resources: Mapping) -> int:
    """GPUs per node that the job's resources (:func:`pretrain_resources`, maybe changed by a
    profile) grant: ``gpu``, or the count of a ``gres`` of ``gpu:G`` or ``gpu:TYPE:G``.
    """
    if "gpu" in resources:
        return int(resources["gpu"])
    match = re.fullmatch(r"gpu(?::[^:]+)?:(\d+)", str(resources.get("gres", "")))
    return int(match.group(1)) if match else 0
