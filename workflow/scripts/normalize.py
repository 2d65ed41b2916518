"""QC step 2: normalise one feature group on the QC-passing subjects."""

import _damt_path  # noqa: F401

from damt.logs import rule_log
from damt.manifest import write_normalized

with rule_log(snakemake.log[0]):
    write_normalized(
        snakemake.config,
        snakemake.wildcards.group,
        snakemake.input.table,
        snakemake.input.checks,
        snakemake.output.table,
        snakemake.output.stats,
    )
