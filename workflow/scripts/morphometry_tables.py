"""Rule `morphometry_tables`: the cohort's global and local morphometry tables."""

import _damt_path  # noqa: F401

from damt.features.morphometry import build_morphometry_tables
from damt.logs import setup_logging

setup_logging(log_file=snakemake.log[0], stderr=False)
build_morphometry_tables(
    snakemake.input.summaries,
    snakemake.input.subjects,
    snakemake.input.catalog,
    {"global": snakemake.output.global_table, "local": snakemake.output.local_table},
)
