"""QC step 2: normalise one feature group on the QC-passing subjects."""

import _damt_path  # noqa: F401

from damt.logs import setup_logging
from damt.manifest import write_normalized

setup_logging(log_file=snakemake.log[0], stderr=False)
write_normalized(
    snakemake.config,
    snakemake.wildcards.group,
    snakemake.input.table,
    snakemake.input.checks,
    snakemake.output.table,
    snakemake.output.stats,
)
