"""Rule `qc_checks`: per-subject checks and preliminary status (damt.qc.steps)."""

import _damt_path  # noqa: F401

from damt.features import FEATURE_GROUPS
from damt.logs import rule_log
from damt.qc.steps import write_checks

with rule_log(snakemake.log[0], snakemake.output):
    write_checks(
        snakemake.params.qc,
        snakemake.params.outdir,
        snakemake.input.subjects,
        snakemake.input.report,
        {s: snakemake.input[s] for s in ("stats", "radiomics", "cache")},
        dict(zip(FEATURE_GROUPS, snakemake.input.tables, strict=True)),
        snakemake.output.checks,
    )
