"""Rule `probe`: linear probe of the frozen encoder and its baselines (damt.probe)."""

import _damt_path  # noqa: F401

from damt.logs import rule_log
from damt.probe import run_probe

with rule_log(snakemake.log[0]):
    run_probe(
        snakemake.params.probe,
        snakemake.input.manifest,
        snakemake.input.encoder,
        snakemake.input.morphometry,
        snakemake.output.results,
        snakemake.output.table,
        snakemake.output.plot,
    )
