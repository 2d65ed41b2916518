"""Rule `finetune`: one run fine-tuned on every task, from its encoder and from scratch
(damt.finetune)."""

from pathlib import Path

import _damt_path  # noqa: F401

from damt.finetune.job import run_finetune
from damt.logs import rule_log

with rule_log(snakemake.log[0], snakemake.output):
    run_finetune(
        snakemake.params.finetune,
        # No phenotype table: an empty input.
        snakemake.input.phenotypes or None,
        snakemake.params.statuses,
        snakemake.input.label_table,
        snakemake.input.manifest,
        Path(snakemake.input.model_card).parent,
        {
            "table": snakemake.output.table,
            "summary": snakemake.output.summary,
            "plot": snakemake.output.plot,
        },
        snakemake.input.probe or None,
    )
