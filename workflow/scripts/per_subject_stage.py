"""Rules `stats`, `radiomics`, `cache`: one shard job of a per-subject stage (damt.stages)."""

import _damt_path  # noqa: F401

from damt.logs import rule_log
from damt.stages.registry import run_stage_shard

with rule_log(snakemake.log[0], snakemake.output):
    run_stage_shard(
        snakemake.params.stage,
        snakemake.params.settings,
        snakemake.params.outdir,
        snakemake.input.members,
        snakemake.output.summary,
        threads=snakemake.threads,
    )
