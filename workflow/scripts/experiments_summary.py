"""Rule `experiments_summary`: every run's probe scores and training cost (damt.experiments)."""

import _damt_path  # noqa: F401

from damt.experiments.summary import write_summary
from damt.logs import rule_log

with rule_log(snakemake.log[0], snakemake.output):
    write_summary(
        snakemake.params.roles,
        dict(zip(snakemake.params.runs, snakemake.input.probes, strict=True)),
        dict(zip(snakemake.params.runs, snakemake.input.cards, strict=True)),
        dict(snakemake.output.items()),
        (
            dict(zip(snakemake.params.runs, snakemake.input.finetunes, strict=True))
            if snakemake.input.finetunes
            else None
        ),
    )
