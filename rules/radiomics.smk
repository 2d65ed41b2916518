# PyRadiomics texture features: one job per shard, then the cohort table.


rule radiomics:
    input:
        members=shard_members,
        params=config["radiomics"]["params"],
    output:
        summary=f"{OUT}/radiomics/shards/{{shard}}.tsv",
    log:
        f"{OUT}/logs/radiomics/{{shard}}.log",
    benchmark:
        f"{OUT}/benchmarks/radiomics/{{shard}}.tsv"
    conda:
        "../envs/features.yaml"
    threads: config["radiomics"]["threads"]
    params:
        stage="radiomics",
        settings=stage_settings("radiomics"),
    script:
        "../workflow/scripts/per_subject_stage.py"


rule radiomics_table:
    input:
        summaries=expand(f"{OUT}/radiomics/shards/{{shard}}.tsv", shard=SHARDS),
        subjects=DISCOVERY_FILES["subjects"],
        params=config["radiomics"]["params"],
    output:
        table=f"{OUT}/features/radiomics.parquet",
    log:
        f"{OUT}/logs/radiomics_table.log",
    benchmark:
        f"{OUT}/benchmarks/radiomics_table.tsv"
    conda:
        "../envs/features.yaml"
    script:
        "../workflow/scripts/radiomics_table.py"
