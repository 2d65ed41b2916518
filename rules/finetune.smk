# Fine-tuning of each run's encoder on labelled tasks against the same network from scratch, on
# the probe's split: trained on the training subjects, scored on the held-out ones. Each unit's
# result is kept under units/, so a killed job redoes only the units it had not finished.
# Work done by damt.finetune.


rule finetune:
    """Fine-tune one run (pretrained and from scratch) on every task, count and seed."""
    input:
        encoder=PATHS.run_file("{run}", ENCODER_FILE),
        model_card=PATHS.run_file("{run}", MODEL_CARD_FILE),
        manifest=PATHS.manifest(),
        phenotypes=config["probe"]["phenotypes"] or [],
        label_table=config["cache"]["label_table"],
        # The morphometry probe's scores on the same split, for reference.
        probe=PATHS.probe("{run}", "probe.tsv") if config["probe"]["phenotypes"] else [],
    output:
        table=report(
            PATHS.finetune("{run}", "finetune.tsv"),
            category="Fine-tuning",
            subcategory="{run}",
            caption="../docs/report/finetune_table.rst",
        ),
        summary=report(
            PATHS.finetune("{run}", "summary.tsv"),
            category="Fine-tuning",
            subcategory="{run}",
            caption="../docs/report/finetune_summary.rst",
        ),
        plot=report(
            PATHS.finetune("{run}", "label_curves.png"),
            category="Fine-tuning",
            subcategory="{run}",
            caption="../docs/report/finetune_plot.rst",
        ),
    log:
        PATHS.log("finetune/{run}"),
    benchmark:
        PATHS.benchmark("finetune/{run}")
    conda:
        "../envs/train.yaml"
    threads: config["finetune"]["threads"]
    resources:
        gpu=config["finetune"]["gpus"],
    params:
        finetune=config["finetune"],
        statuses=config["probe"]["statuses"],
    script:
        "../workflow/scripts/finetune.py"
