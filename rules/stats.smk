# FreeSurfer stats → per-subject long tables (one job per shard) → cohort morphometry tables.
# Logic: damt.freesurfer.stats_stage and damt.features.morphometry.


rule stats:
    input:
        members=shard_members,
    output:
        summary=f"{OUT}/stats/shards/{{shard}}.tsv",
    log:
        f"{OUT}/logs/stats/{{shard}}.log",
    benchmark:
        f"{OUT}/benchmarks/stats/{{shard}}.tsv"
    conda:
        "../envs/features.yaml"
    params:
        stage="stats",
    script:
        "../workflow/scripts/per_subject_stage.py"


rule morphometry_tables:
    input:
        summaries=expand(f"{OUT}/stats/shards/{{shard}}.tsv", shard=SHARDS),
        subjects=DISCOVERY_FILES["subjects"],
        catalog=config["morphometry"]["catalog"],
    output:
        global_table=f"{OUT}/features/morphometry_global.parquet",
        local_table=f"{OUT}/features/morphometry_local.parquet",
    log:
        f"{OUT}/logs/morphometry_tables.log",
    benchmark:
        f"{OUT}/benchmarks/morphometry_tables.tsv"
    conda:
        "../envs/features.yaml"
    script:
        "../workflow/scripts/morphometry_tables.py"
