# Self-supervised pretraining (DDP under torchrun) and its report figures.
# Work done by damt.training.launch (retrain policy, torchrun) and damt.training.report.


rule pretrain:
    """Pretrain the 3D Swin encoder on the training cache (or export the kept run)."""
    input:
        manifest=retrain_input(PATHS.manifest()),
        tables=retrain_input([PATHS.normalized_table(g) for g in FEATURE_GROUPS]),
        cache=retrain_input(stage_summaries("cache")),
        label_table=retrain_input(config["cache"]["label_table"]),
    output:
        encoder=PATHS.run_file(RUN, ENCODER_FILE),
        model_card=PATHS.run_file(RUN, MODEL_CARD_FILE),
    log:
        PATHS.log("pretrain"),
    benchmark:
        PATHS.benchmark("pretrain")
    conda:
        "../envs/train.yaml"
    threads: config["pretrain"]["threads"]
    resources:
        **pretrain_resources(config["pretrain"]),
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output.encoder),
        pretrain=config["pretrain"],
        evaluation={k: config["probe"][k] for k in ("phenotypes", "targets")},
    script:
        "../workflow/scripts/pretrain.py"


rule training_report:
    """Loss curves and learned task weights of the pretraining run."""
    input:
        model_card=PATHS.run_file(RUN, MODEL_CARD_FILE),
    output:
        curves=report(
            PATHS.run_file(RUN, "loss_curves.png"),
            category="Pretraining",
            caption="../docs/report/loss_curves.rst",
        ),
        weights=report(
            PATHS.run_file(RUN, "task_weights.png"),
            category="Pretraining",
            caption="../docs/report/task_weights.rst",
        ),
    log:
        PATHS.log("training_report"),
    benchmark:
        PATHS.benchmark("training_report")
    conda:
        "../envs/train.yaml"
    params:
        run_dir=lambda wildcards, input: os.path.dirname(input.model_card),
    script:
        "../workflow/scripts/training_report.py"
