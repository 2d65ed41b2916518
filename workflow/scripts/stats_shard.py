"""Rule `stats`: parse the stats files of one shard's subjects (damt.freesurfer.stats_stage)."""

import _damt_path  # noqa: F401  (puts the repository's damt on sys.path)

from damt.cli import setup_logging
from damt.freesurfer.stats_stage import run_stats_shard

setup_logging(log_file=snakemake.log[0])
run_stats_shard(
    snakemake.input.members,
    snakemake.config["outdir"],
    snakemake.output.summary,
    workers=snakemake.threads,
)
