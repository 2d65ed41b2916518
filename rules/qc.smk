# Cohort QC: checks -> normalisation (fitted on QC-passing subjects) -> manifest (with the
# held-out evaluation split, damt.split) + QC report.
# Work done by damt.qc.steps (checks: damt.qc.checks, figures: damt.qc.report) and
# damt.features.normalize.


rule qc_checks:
    """Per-subject checks and a preliminary QC status (before outliers)."""
    input:
        subjects=PATHS.discovery_subjects(),
        report=PATHS.discovery_report(),
        stats=stage_summaries("stats"),
        radiomics=stage_summaries("radiomics"),
        cache=stage_summaries("cache"),
        tables=[PATHS.feature_table(g) for g in FEATURE_GROUPS],
    output:
        checks=PATHS.qc_checks(),
    log:
        PATHS.log("qc_checks"),
    benchmark:
        PATHS.benchmark("qc_checks")
    conda:
        "../envs/features.yaml"
    params:
        qc=qc_params(config["qc"], "qc_checks"),
        outdir=results_dir_above("checks", 2),  # {outdir}/qc/checks.parquet
    script:
        "../workflow/scripts/qc_checks.py"


rule normalize:
    """Normalise one feature group, fitted on the subjects that pass the checks."""
    input:
        table=PATHS.feature_table("{group}"),
        checks=PATHS.qc_checks(),
    output:
        table=PATHS.normalized_table("{group}"),
        stats=PATHS.norm_stats("{group}"),
    log:
        PATHS.log("normalize/{group}"),
    benchmark:
        PATHS.benchmark("normalize/{group}")
    wildcard_constraints:
        group="|".join(FEATURE_GROUPS),
    conda:
        "../envs/features.yaml"
    params:
        normalize=config["normalize"],
    script:
        "../workflow/scripts/normalize.py"


rule manifest:
    """Outliers, final statuses, the manifest and the QC page of the report."""
    input:
        checks=PATHS.qc_checks(),
        norm_stats=[PATHS.norm_stats(g) for g in FEATURE_GROUPS],
        tables=[PATHS.feature_table(g) for g in FEATURE_GROUPS],
    output:
        manifest=PATHS.manifest(),
        failures=report(
            PATHS.qc_page("failures.tsv"),
            category="Quality control",
            caption="../docs/report/qc_failures.rst",
        ),
        distributions=report(
            PATHS.qc_page("distributions.png"),
            category="Quality control",
            caption="../docs/report/qc_distributions.rst",
        ),
        montage=report(
            PATHS.qc_page("montage.png"),
            category="Quality control",
            caption="../docs/report/qc_montage.rst",
        ),
    log:
        PATHS.log("manifest"),
    benchmark:
        PATHS.benchmark("manifest")
    conda:
        "../envs/features.yaml"
    params:
        qc=qc_params(config["qc"], "manifest"),
        evaluation=config["evaluation"],
    script:
        "../workflow/scripts/manifest.py"
