"""Every check of a pretrain run's settings, at parse time and in the job before anything moves."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from damt.training.settings import TrainSettings


class LaunchError(RuntimeError):
    """The pretrain job cannot run as configured (the message says why and what to change)."""


def check_gpus(settings: TrainSettings, granted: int) -> None:
    """Refuse a GPU grant that differs from the ``pretrain`` settings, or half precision on the
    CPU, saying how to fix it (at parse time, not after the cohort stages have run).
    """
    wanted = settings.gpus
    if wanted == 0 and settings.precision in ("bf16", "fp16"):
        raise LaunchError(
            f"pretrain.precision is {settings.precision} but pretrain.gpus is 0: "
            "half precision is GPU-only (see damt.training.step.resolve_precision); use "
            "precision: auto or fp32 on the CPU, or set pretrain.gpus."
        )
    if granted != wanted:
        raise LaunchError(
            f"pretrain.gpus is {wanted} but this job was given gpu={granted}. Snakemake scales a "
            "job's resources down to the --resources limit without a word, which would change "
            "the global batch size and the learning rate. Run with --resources gpu="
            f"{wanted} (or more), or set pretrain.gpus: {granted}."
        )


def check_hardware(settings: TrainSettings) -> None:
    """Refuse ``pretrain.gpus`` GPUs where fewer are visible to the job (before anything moves)."""
    wanted = settings.gpus
    if wanted <= 0:
        return
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < wanted:
        raise LaunchError(
            f"pretrain.gpus is {wanted} but this job sees {visible} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            f"run it where {wanted} GPUs are available or set pretrain.gpus: {visible}. "
            "Nothing was trained, moved or deleted."
        )


def check_nodes(
    settings: TrainSettings, environ: Mapping[str, str], cluster_executor: bool = False
) -> None:
    """Refuse ``pretrain.nodes`` > 1 where the job cannot reach other nodes: outside a SLURM
    allocation (no ``SLURM_JOB_ID``), unless Snakemake submits the job to SLURM
    (``cluster_executor``: the job then runs inside an allocation of its own).
    """
    nodes = settings.nodes
    if nodes > 1 and not cluster_executor and "SLURM_JOB_ID" not in environ:
        raise LaunchError(
            f"pretrain.nodes is {nodes} but the pretrain job would run outside a SLURM "
            "allocation (no SLURM_JOB_ID): several nodes are reached through SLURM. Run with "
            f"--profile profiles/slurm, or start Snakemake inside an allocation of {nodes} "
            f"nodes (salloc --nodes={nodes} --ntasks-per-node=1 ...), or set pretrain.nodes: 1. "
            "Nothing was trained, moved or deleted."
        )


def parse_run_settings(pretrain: Mapping) -> TrainSettings:
    """A validated ``pretrain`` section parsed once (:meth:`TrainSettings.from_section`: warmup
    below epochs, crop sizes the network's stride needs, ...); a LaunchError saying so when
    its keys do not go together."""
    try:
        return TrainSettings.from_section(pretrain)
    except (ValueError, KeyError) as exc:
        raise LaunchError(
            f"invalid pretrain settings: {exc}. Fix the config and run again (nothing was "
            "trained, moved or deleted)."
        ) from exc


def check_run_settings(
    pretrain: Mapping, granted_gpus: int | None = None, hardware: bool = False
) -> TrainSettings:
    """Every check of a run's settings, in one place, and the settings they checked: the
    cross-key checks (:func:`parse_run_settings`), the GPU grant (``granted_gpus``:
    Snakemake's resources, GPUs per node) and, with ``hardware``, the GPUs the job can see
    and, for several nodes, the SLURM allocation it runs in.

    The Snakefile calls it at parse time (so ``snakemake -n`` refuses a bad config before any
    job runs) and the pretrain job before it moves or deletes anything.
    """
    settings = parse_run_settings(pretrain)
    if granted_gpus is not None:
        check_gpus(settings, granted_gpus)
    if hardware:
        check_hardware(settings)
        check_nodes(settings, os.environ)
    return settings


def check_run_free(run_dir: Path) -> None:
    """Refuse a run folder whose lock a live process holds (before anything in it moves)."""
    from damt.training.process import lock_holder

    holder = lock_holder(run_dir)
    if holder is not None:
        raise LaunchError(
            f"{run_dir} is being trained by another process ({holder}): a trainer left from an "
            "earlier run, or a second workflow on the same results. Wait for it to finish, or "
            "stop it (kill <pid>), then run again; --rerun-incomplete alone does not help while "
            "it runs."
        )
