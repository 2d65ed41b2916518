# Linear and k-NN probes of each run's frozen encoder, fitted on the pretraining subjects and
# scored on the held-out ones, with random-init encoders and morphometry as baselines. Every run
# is probed on the same split (a data-scaling run's subset does not change it), so runs compare.
# Work done by damt.probe.


rule probe:
    """Linear and k-NN probes of one run's frozen encoder against its baselines."""
    input:
        encoder=PATHS.run_file("{run}", ENCODER_FILE),
        model_card=PATHS.run_file("{run}", MODEL_CARD_FILE),
        manifest=PATHS.manifest(),
        morphometry=[PATHS.normalized_table(g) for g in TASK_FEATURE_GROUPS["morphometry"]],
        phenotypes=config["probe"]["phenotypes"] or [],
    output:
        results=PATHS.probe("{run}", "probe.json"),
        table=report(
            PATHS.probe("{run}", "probe.tsv"),
            category="Probes",
            subcategory="{run}",
            caption="../docs/report/probe_table.rst",
        ),
        plot=report(
            PATHS.probe("{run}", "probe.png"),
            category="Probes",
            subcategory="{run}",
            caption="../docs/report/probe_plot.rst",
        ),
        label_efficiency=report(
            PATHS.probe("{run}", "label_efficiency.png"),
            category="Probes",
            subcategory="{run}",
            caption="../docs/report/probe_label_efficiency.rst",
        ),
        embedding=report(
            PATHS.probe("{run}", "embedding.png"),
            category="Probes",
            subcategory="{run}",
            caption="../docs/report/probe_embedding.rst",
        ),
    log:
        PATHS.log("probe/{run}"),
    benchmark:
        PATHS.benchmark("probe/{run}")
    conda:
        "../envs/train.yaml"
    threads: config["probe"]["threads"]
    params:
        probe=config["probe"],
    script:
        "../workflow/scripts/probe.py"
