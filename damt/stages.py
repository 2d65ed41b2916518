"""Registry of the per-subject stages, and the entry point of their shard jobs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from damt.shards import Stage, run_shard

log = logging.getLogger(__name__)


def _radiomics(config: dict) -> Stage:
    from damt.features.radiomics import stage_from_config

    return stage_from_config(config)


def _cache(config: dict) -> Stage:
    from damt.cache import stage_from_config

    return stage_from_config(config)


def _stats(config: dict) -> Stage:
    from damt.freesurfer.stats_stage import StatsStage

    return StatsStage()


STAGES: dict[str, Callable[[dict], Stage]] = {
    "stats": _stats,
    "radiomics": _radiomics,
    "cache": _cache,
}


def build_stage(name: str, config: dict) -> Stage:
    """The configured stage ``name``."""
    try:
        factory = STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(sorted(STAGES))}") from None
    return factory(config)


def run_stage_shard(
    name: str,
    config: dict,
    members: str | Path,
    summary: str | Path,
    threads: int = 1,
) -> None:
    """What a shard job of stage ``name`` does: process the shard, write its summary."""
    frame = run_shard(
        build_stage(name, config), members, config["outdir"], summary, workers=threads
    )
    failed = frame[frame["status"] != "ok"]
    for rec in failed.itertuples():
        log.warning("%s %s failed: %s: %s", name, rec.subject_id, rec.reason, rec.detail)
