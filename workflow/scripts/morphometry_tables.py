"""Rule `morphometry_tables`: the cohort's global and local morphometry tables."""

import _damt_path  # noqa: F401

from damt.features.morphometry import build_morphometry_tables
from damt.logs import rule_log

with rule_log(snakemake.log[0], snakemake.output):
    build_morphometry_tables(
        snakemake.input.summaries,
        snakemake.input.subjects,
        snakemake.input.catalog,
        {"global": snakemake.output.global_table, "local": snakemake.output.local_table},
    )
