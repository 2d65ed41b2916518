# Self-supervised pretraining (DDP under torchrun) and its report figures, one job per run of
# the plan ({run}: rules/common.smk RUNS, damt.experiments.plan). Work done by
# damt.training.launch (retrain policy, torchrun) and damt.training.report.


rule pretrain:
    """Pretrain the 3D Swin encoder of one run on the training cache (or export the kept run)."""
    input:
        unpack(pretrain_inputs),
    output:
        encoder=PATHS.run_file("{run}", ENCODER_FILE),
        model_card=PATHS.run_file("{run}", MODEL_CARD_FILE),
        monai_ssl=PATHS.run_file("{run}", MONAI_SSL_FILE),
    log:
        PATHS.log("pretrain/{run}"),
    benchmark:
        PATHS.benchmark("pretrain/{run}")
    conda:
        "../envs/train.yaml"
    threads: lambda wildcards: SETTINGS[wildcards.run].threads
    resources:
        **run_resources(),
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output.encoder),
        pretrain=pretrain_section,
        evaluation={k: config["probe"][k] for k in ("phenotypes", "targets")},
        preprocessing=preprocessing_settings,
    script:
        "../workflow/scripts/pretrain.py"


rule training_report:
    """Loss curves and learned task weights of one pretraining run."""
    input:
        model_card=PATHS.run_file("{run}", MODEL_CARD_FILE),
    output:
        curves=report(
            PATHS.run_file("{run}", "loss_curves.png"),
            category="Pretraining",
            subcategory="{run}",
            caption="../docs/report/loss_curves.rst",
        ),
        weights=report(
            PATHS.run_file("{run}", "task_weights.png"),
            category="Pretraining",
            subcategory="{run}",
            caption="../docs/report/task_weights.rst",
        ),
    log:
        PATHS.log("training_report/{run}"),
    benchmark:
        PATHS.benchmark("training_report/{run}")
    conda:
        "../envs/train.yaml"
    params:
        run_dir=lambda wildcards, input: os.path.dirname(input.model_card),
    script:
        "../workflow/scripts/training_report.py"
