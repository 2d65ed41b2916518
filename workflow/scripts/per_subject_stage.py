"""Shard job of a per-subject stage (stats, radiomics, cache): see damt.stages."""

import _damt_path  # noqa: F401

from damt.stages import run_stage_shard

run_stage_shard(
    snakemake.params.stage,
    snakemake.config,
    snakemake.input.members,
    snakemake.output.summary,
    log_file=snakemake.log[0],
    threads=snakemake.threads,
)
