"""Discovery as the configuration and the Snakefile ask for it."""

from __future__ import annotations

import logging
from pathlib import Path

from damt.discovery.ids import read_participants, read_subjects_list
from damt.discovery.record import read_discovery, write_discovery
from damt.discovery.scan import Discovery, discover_subjects
from damt.paths import ResultPaths

log = logging.getLogger(__name__)


def discover_from_config(config: dict) -> Discovery:
    """Run :func:`discover_subjects` with the settings of a validated configuration."""
    sub = config["subjects"]
    return discover_subjects(
        sub["dirs"],
        required_files=sub["required_files"],
        exclude=sub["exclude"],
        n_shards=config["sharding"]["n_shards"],
        include_templates=sub["include_templates"],
        subjects_list=read_subjects_list(sub["list"]) if sub["list"] else None,
        input_files=stage_input_files(config),
        fastsurfer_required_files=sub["fastsurfer_required_files"],
        fastsurfer_input_files=stage_input_files(config, layout="fastsurfer"),
        participants=read_participants(sub["participants"]) if sub["participants"] else None,
        stale_after_hours=sub["stale_after_hours"],
    )


def stage_input_files(config: dict, layout: str = "") -> list[str]:
    """Subject-relative files the per-subject stages read (volumes of cache and radiomics), of
    FreeSurfer subjects or, with ``layout="fastsurfer"``, of FastSurfer subjects."""
    out: list[str] = []
    for section in ("cache", "radiomics"):
        settings = config[section][layout] if layout else config[section]
        # A mask exists in the FastSurfer layout only (FreeSurfer's brainmask is the image).
        for value in (settings["image"], settings["atlas"], settings.get("mask")):
            if value and value not in out:
                out.append(value)
    return out


def discover_for_workflow(config: dict, main_process: bool = True) -> Discovery:
    """Discovery as the Snakefile needs it.

    The main Snakemake process scans the folders and writes the discovery files; job processes
    (cluster jobs re-parse the Snakefile) read those files instead of scanning again, so that
    every job sees the cohort the main process planned with.
    """
    outdir = config["outdir"]
    if not main_process and Path(ResultPaths(outdir).discovery_subjects()).exists():
        return read_discovery(outdir)
    discovery = discover_from_config(config)
    for notice in discovery.notices:
        log.info("%s", notice)
    write_discovery(discovery, outdir)
    return discovery
