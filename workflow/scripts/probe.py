"""Rule `probe`: linear and k-NN probes of the frozen encoder and its baselines (damt.probe)."""

import _damt_path  # noqa: F401

from damt.logs import rule_log
from damt.probe.job import run_probe

with rule_log(snakemake.log[0], snakemake.output):
    run_probe(
        snakemake.params.probe,
        snakemake.input.manifest,
        snakemake.input.encoder,
        snakemake.input.model_card,
        snakemake.input.morphometry,
        {
            "json": snakemake.output.results,
            "table": snakemake.output.table,
            "plot": snakemake.output.plot,
            "label_efficiency": snakemake.output.label_efficiency,
            "embedding": snakemake.output.embedding,
        },
    )
