"""Rule `radiomics_table`: the cohort radiomics table from the shard summaries."""

import _damt_path  # noqa: F401

from damt.discovery.record import read_discovery_subject_ids
from damt.features.radiomics import build_radiomics_table
from damt.logs import rule_log

with rule_log(snakemake.log[0], snakemake.output):
    build_radiomics_table(
        snakemake.input.summaries,
        read_discovery_subject_ids(snakemake.input.subjects),
        snakemake.input.params,
        snakemake.params.rois,
        snakemake.output.table,
    )
