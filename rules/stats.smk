# FreeSurfer stats → per-subject long tables (one job per shard) → cohort morphometry tables.
# Work done by damt.stages.stats (parsing: damt.freesurfer.stats) and damt.features.morphometry.


rule stats:
    """Parse each subject's stats/ folder into its long table (one job per shard)."""
    input:
        members=shard_members,
    output:
        summary=PATHS.stage_summary("stats", "{shard}"),
    log:
        PATHS.log("stats/{shard}"),
    benchmark:
        PATHS.benchmark("stats/{shard}")
    conda:
        "../envs/features.yaml"
    params:
        stage="stats",
        settings={},
        outdir=results_dir_above("summary", 3),  # {outdir}/STAGE/shards/SHARD.tsv
    script:
        "../workflow/scripts/per_subject_stage.py"


rule morphometry_tables:
    """Cohort morphometry tables (global and local) from the subjects' long tables."""
    input:
        summaries=stage_summaries("stats"),
        subjects=PATHS.discovery_subjects(),
        catalog=config["morphometry"]["catalog"],
    output:
        global_table=PATHS.feature_table("morphometry_global"),
        local_table=PATHS.feature_table("morphometry_local"),
    log:
        PATHS.log("morphometry_tables"),
    benchmark:
        PATHS.benchmark("morphometry_tables")
    conda:
        "../envs/features.yaml"
    script:
        "../workflow/scripts/morphometry_tables.py"
