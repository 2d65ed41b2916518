# Training cache: each subject's volumes preprocessed once (and its volume QC measures).


rule cache:
    input:
        members=shard_members,
        label_table=config["cache"]["label_table"],
    output:
        summary=f"{OUT}/cache/shards/{{shard}}.tsv",
    log:
        f"{OUT}/logs/cache/{{shard}}.log",
    benchmark:
        f"{OUT}/benchmarks/cache/{{shard}}.tsv"
    conda:
        "../envs/features.yaml"
    threads: config["cache"]["threads"]
    params:
        stage="cache",
        settings=stage_settings("cache"),
    script:
        "../workflow/scripts/per_subject_stage.py"
