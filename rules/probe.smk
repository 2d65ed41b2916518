# Linear and k-NN probes of the frozen encoder, fitted on the pretraining subjects and scored on
# the held-out ones, with random-init encoders and morphometry as baselines. Work done by
# damt.probe.


rule probe:
    """Linear and k-NN probes of the frozen encoder against its baselines."""
    input:
        encoder=PATHS.run_file(RUN, ENCODER_FILE),
        model_card=PATHS.run_file(RUN, MODEL_CARD_FILE),
        manifest=PATHS.manifest(),
        morphometry=[PATHS.normalized_table(g) for g in TASK_FEATURE_GROUPS["morphometry"]],
        phenotypes=config["probe"]["phenotypes"] or [],
    output:
        results=PATHS.probe("probe.json"),
        table=report(
            PATHS.probe("probe.tsv"),
            category="Probes",
            caption="../docs/report/probe_table.rst",
        ),
        plot=report(
            PATHS.probe("probe.png"),
            category="Probes",
            caption="../docs/report/probe_plot.rst",
        ),
        label_efficiency=report(
            PATHS.probe("label_efficiency.png"),
            category="Probes",
            caption="../docs/report/probe_label_efficiency.rst",
        ),
        embedding=report(
            PATHS.probe("embedding.png"),
            category="Probes",
            caption="../docs/report/probe_embedding.rst",
        ),
    log:
        PATHS.log("probe"),
    benchmark:
        PATHS.benchmark("probe")
    conda:
        "../envs/train.yaml"
    threads: config["probe"]["threads"]
    params:
        probe=config["probe"],
    script:
        "../workflow/scripts/probe.py"
