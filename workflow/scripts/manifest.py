"""Rule `manifest`: outliers, final statuses, the manifest and the QC page (damt.qc.steps)."""

import _damt_path  # noqa: F401

from damt.features import FEATURE_GROUPS
from damt.logs import rule_log
from damt.qc.steps import write_manifest

with rule_log(snakemake.log[0], snakemake.output):
    write_manifest(
        snakemake.params.qc,
        snakemake.params.evaluation,
        snakemake.input.checks,
        dict(zip(FEATURE_GROUPS, snakemake.input.norm_stats, strict=True)),
        dict(zip(FEATURE_GROUPS, snakemake.input.tables, strict=True)),
        snakemake.output.manifest,
        snakemake.output.failures,
        snakemake.output.distributions,
        snakemake.output.montage,
    )
