"""QC step 1: per-subject checks and preliminary status."""

import _damt_path  # noqa: F401

from damt.logs import rule_log
from damt.manifest import write_checks

with rule_log(snakemake.log[0]):
    write_checks(
        snakemake.params.qc,
        snakemake.config["outdir"],
        snakemake.input.subjects,
        snakemake.input.report,
        {s: snakemake.input[s] for s in ("stats", "radiomics", "cache")},
        {
            "morphometry_global": snakemake.input.morphometry_global,
            "morphometry_local": snakemake.input.morphometry_local,
            "radiomics": snakemake.input.radiomics_table,
        },
        snakemake.output.checks,
    )
