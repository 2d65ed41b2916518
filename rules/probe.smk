# Linear probe of the frozen encoder, with a random-init encoder and morphometry as baselines.
# Work done by damt.probe.


rule probe:
    """Linear probe of the frozen encoder against its baselines."""
    input:
        encoder=PATHS.run_file(RUN, ENCODER_FILE),
        manifest=PATHS.manifest(),
        morphometry=[PATHS.normalized_table(g) for g in TASK_FEATURE_GROUPS["morphometry"]],
        phenotypes=config["probe"]["phenotypes"] or [],
    output:
        results=PATHS.probe("probe.json"),
        table=report(
            PATHS.probe("probe.tsv"),
            category="Linear probe",
            caption="../docs/report/probe_table.rst",
        ),
        plot=report(
            PATHS.probe("probe.png"),
            category="Linear probe",
            caption="../docs/report/probe_plot.rst",
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
