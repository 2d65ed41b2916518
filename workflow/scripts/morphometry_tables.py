"""Rule `morphometry_tables`: the cohort's global and local morphometry tables."""

import _damt_path  # noqa: F401  (puts the repository's damt on sys.path)

from damt.cli import setup_logging
from damt.features.morphometry import build_morphometry_tables

setup_logging(log_file=snakemake.log[0])
build_morphometry_tables(
    snakemake.input.summaries,
    snakemake.input.subjects,
    snakemake.input.catalog,
    {"global": snakemake.output.global_table, "local": snakemake.output.local_table},
    snakemake.config["outdir"],
)
