# Training cache: each subject's volumes preprocessed once (and its volume QC measures).
# Work done by damt.stages.cache.


rule cache:
    """Preprocess each subject's image and atlas once for training (one job per shard)."""
    input:
        members=shard_members,
        label_table=config["cache"]["label_table"],
    output:
        summary=PATHS.stage_summary("cache", "{shard}"),
    log:
        PATHS.log("cache/{shard}"),
    benchmark:
        PATHS.benchmark("cache/{shard}")
    conda:
        "../envs/features.yaml"
    threads: config["cache"]["threads"]
    params:
        stage="cache",
        settings=stage_settings("cache"),
        outdir=results_dir_above("summary", 3),  # {outdir}/STAGE/shards/SHARD.tsv
    script:
        "../workflow/scripts/per_subject_stage.py"
