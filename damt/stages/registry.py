"""Registry of the per-subject stages, and the entry point of their shard jobs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from damt.stages.store import Stage, run_shard

log = logging.getLogger(__name__)


def _radiomics(settings: Mapping, threads: int) -> Stage:
    from damt.stages.radiomics import RadiomicsStage

    return RadiomicsStage(
        settings["params"],
        settings["rois"],
        settings["image"],
        settings["atlas"],
        settings["fastsurfer"],
        threads,
    )


def _cache(settings: Mapping, threads: int) -> Stage:
    from damt.stages.cache import stage_from_settings

    return stage_from_settings(settings)


def _stats(settings: Mapping, threads: int) -> Stage:
    from damt.stages.stats import StatsStage

    return StatsStage()


STAGES: dict[str, Callable[[Mapping, int], Stage]] = {
    "stats": _stats,
    "radiomics": _radiomics,
    "cache": _cache,
}


def build_stage(name: str, settings: Mapping, threads: int = 1) -> Stage:
    """Stage ``name`` with its config section ``settings`` (``radiomics``, ``cache``; the stats
    stage has none)."""
    try:
        factory = STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(sorted(STAGES))}") from None
    return factory(settings, threads)


def run_stage_shard(
    name: str,
    settings: Mapping,
    outdir: str | Path,
    members: str | Path,
    summary: str | Path,
    threads: int = 1,
) -> None:
    """What a shard job of stage ``name`` does: process the shard, write its summary."""
    frame = run_shard(
        build_stage(name, settings, threads), members, outdir, summary, workers=threads
    )
    failed = frame[frame["status"] != "ok"]
    for rec in failed.itertuples():
        log.warning("%s %s failed: %s: %s", name, rec.subject_id, rec.reason, rec.detail)
