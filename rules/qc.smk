# Cohort QC: checks -> normalisation (fitted on QC-passing subjects) -> manifest + QC report.


rule qc_checks:
    input:
        subjects=DISCOVERY_FILES["subjects"],
        report=DISCOVERY_FILES["report"],
        stats=expand(f"{OUT}/stats/shards/{{shard}}.tsv", shard=SHARDS),
        radiomics=expand(f"{OUT}/radiomics/shards/{{shard}}.tsv", shard=SHARDS),
        cache=expand(f"{OUT}/cache/shards/{{shard}}.tsv", shard=SHARDS),
        morphometry_global=f"{OUT}/features/morphometry_global.parquet",
        morphometry_local=f"{OUT}/features/morphometry_local.parquet",
        radiomics_table=f"{OUT}/features/radiomics.parquet",
    output:
        checks=f"{OUT}/qc/checks.parquet",
    log:
        f"{OUT}/logs/qc_checks.log",
    benchmark:
        f"{OUT}/benchmarks/qc_checks.tsv"
    conda:
        "../envs/features.yaml"
    params:
        qc=qc_params(config["qc"], "qc_checks"),
    script:
        "../workflow/scripts/qc_checks.py"


rule normalize:
    input:
        table=f"{OUT}/features/{{group}}.parquet",
        checks=f"{OUT}/qc/checks.parquet",
    output:
        table=f"{OUT}/features/{{group}}.z.parquet",
        stats=f"{OUT}/features/{{group}}.norm.json",
    log:
        f"{OUT}/logs/normalize/{{group}}.log",
    benchmark:
        f"{OUT}/benchmarks/normalize/{{group}}.tsv"
    wildcard_constraints:
        group="|".join(FEATURE_GROUPS),
    conda:
        "../envs/features.yaml"
    params:
        normalize=config["normalize"],
    script:
        "../workflow/scripts/normalize.py"


rule manifest:
    input:
        checks=f"{OUT}/qc/checks.parquet",
        norm_stats=expand(f"{OUT}/features/{{group}}.norm.json", group=FEATURE_GROUPS),
        tables=expand(f"{OUT}/features/{{group}}.parquet", group=FEATURE_GROUPS),
    output:
        manifest=f"{OUT}/manifest.parquet",
        failures=report(
            f"{OUT}/qc/failures.tsv",
            category="Quality control",
            caption="../docs/report/qc_failures.rst",
        ),
        distributions=report(
            f"{OUT}/qc/distributions.png",
            category="Quality control",
            caption="../docs/report/qc_distributions.rst",
        ),
        montage=report(
            f"{OUT}/qc/montage.png",
            category="Quality control",
            caption="../docs/report/qc_montage.rst",
        ),
    log:
        f"{OUT}/logs/manifest.log",
    benchmark:
        f"{OUT}/benchmarks/manifest.tsv"
    conda:
        "../envs/features.yaml"
    params:
        qc=qc_params(config["qc"], "manifest"),
    script:
        "../workflow/scripts/manifest.py"
