"""Rule `normalize`: normalise one feature group on the QC-passing subjects."""

import _damt_path  # noqa: F401

from damt.features.normalize import write_normalized
from damt.logs import rule_log

with rule_log(snakemake.log[0], snakemake.output):
    write_normalized(
        snakemake.params.normalize,
        snakemake.wildcards.group,
        snakemake.input.table,
        snakemake.input.checks,
        snakemake.output.table,
        snakemake.output.stats,
    )
