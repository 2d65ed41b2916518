# Linear probe of the frozen encoder, with a random-init encoder and morphometry as baselines.


rule probe:
    input:
        encoder=f"{RUN_DIR}/encoder.safetensors",
        manifest=f"{OUT}/manifest.parquet",
        morphometry=expand(
            f"{OUT}/features/morphometry_{{group}}.z.parquet",
            group=("global", "local"),
        ),
        phenotypes=config["probe"]["phenotypes"] or [],
    output:
        results=f"{OUT}/probe/probe.json",
        table=report(
            f"{OUT}/probe/probe.tsv",
            category="Linear probe",
            caption="../docs/report/probe_table.rst",
        ),
        plot=report(
            f"{OUT}/probe/probe.png",
            category="Linear probe",
            caption="../docs/report/probe_plot.rst",
        ),
    log:
        f"{OUT}/logs/probe.log",
    benchmark:
        f"{OUT}/benchmarks/probe.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["probe"]["threads"]
    params:
        probe=config["probe"],
    script:
        "../workflow/scripts/probe.py"
