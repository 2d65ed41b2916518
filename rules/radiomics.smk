# PyRadiomics texture features: one job per shard, then the cohort table.
# Work done by damt.stages.radiomics (PyRadiomics call and cohort table: damt.features.radiomics).


rule radiomics:
    """PyRadiomics features of each subject's ROIs (one job per shard)."""
    input:
        members=shard_members,
        params=config["radiomics"]["params"],
    output:
        summary=PATHS.stage_summary("radiomics", "{shard}"),
    log:
        PATHS.log("radiomics/{shard}"),
    benchmark:
        PATHS.benchmark("radiomics/{shard}")
    conda:
        "../envs/features.yaml"
    threads: config["radiomics"]["threads"]
    params:
        stage="radiomics",
        settings=stage_settings("radiomics"),
        outdir=results_dir_above("summary", 3),  # {outdir}/STAGE/shards/SHARD.tsv
    script:
        "../workflow/scripts/per_subject_stage.py"


rule radiomics_table:
    """Cohort radiomics table (one row per subject, NaN where a subject failed)."""
    input:
        summaries=stage_summaries("radiomics"),
        subjects=PATHS.discovery_subjects(),
        params=config["radiomics"]["params"],
    output:
        table=PATHS.feature_table("radiomics"),
    log:
        PATHS.log("radiomics_table"),
    benchmark:
        PATHS.benchmark("radiomics_table")
    conda:
        "../envs/features.yaml"
    params:
        rois=config["radiomics"]["rois"],
    script:
        "../workflow/scripts/radiomics_table.py"
