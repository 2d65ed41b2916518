# Self-supervised pretraining (DDP under torchrun) and its report figures.


rule pretrain:
    input:
        manifest=retrain_input(f"{OUT}/manifest.parquet"),
        tables=retrain_input(
            expand(f"{OUT}/features/{{group}}.z.parquet", group=FEATURE_GROUPS)
        ),
        cache=retrain_input(expand(f"{OUT}/cache/shards/{{shard}}.tsv", shard=SHARDS)),
        label_table=retrain_input(config["cache"]["label_table"]),
    output:
        encoder=f"{RUN_DIR}/encoder.safetensors",
        model_card=f"{RUN_DIR}/model_card.json",
    log:
        f"{OUT}/logs/pretrain.log",
    benchmark:
        f"{OUT}/benchmarks/pretrain.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["pretrain"]["threads"]
    resources:
        gpu=config["pretrain"]["gpus"],
    params:
        run_dir=lambda w, output: os.path.dirname(output.encoder),
        pretrain=config["pretrain"],
    script:
        "../workflow/scripts/pretrain.py"


rule training_report:
    input:
        model_card=f"{RUN_DIR}/model_card.json",
    output:
        curves=report(
            f"{RUN_DIR}/loss_curves.png",
            category="Pretraining",
            caption="../docs/report/loss_curves.rst",
        ),
        weights=report(
            f"{RUN_DIR}/task_weights.png",
            category="Pretraining",
            caption="../docs/report/task_weights.rst",
        ),
    log:
        f"{OUT}/logs/training_report.log",
    benchmark:
        f"{OUT}/benchmarks/training_report.tsv"
    conda:
        "../envs/train.yaml"
    params:
        run_dir=lambda w, input: os.path.dirname(input.model_card),
    script:
        "../workflow/scripts/training_report.py"
