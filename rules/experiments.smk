# The experiment plan's summary: every run's probe results, fine-tuning deltas and training cost and
# the report's figures (ablation bars, data- and model-scaling curves, cost). Work done by
# damt.experiments.summary; the runs come from rules/common.smk RUNS.


rule experiments_summary:
    """Every run's probe scores (delta to the full model), fine-tuning deltas and training cost,
    with figures."""
    input:
        probes=[PATHS.probe(run, "probe.tsv") for run in RUNS],
        cards=[PATHS.run_file(run, MODEL_CARD_FILE) for run in RUNS],
        finetunes=[PATHS.finetune(run, "summary.tsv") for run in RUNS] if FINETUNE else [],
    output:
        **summary_outputs(),
    log:
        PATHS.log("experiments_summary"),
    benchmark:
        PATHS.benchmark("experiments_summary")
    conda:
        "../envs/train.yaml"
    params:
        roles=roles_table(RUNS),
        runs=list(RUNS),
    script:
        "../workflow/scripts/experiments_summary.py"
