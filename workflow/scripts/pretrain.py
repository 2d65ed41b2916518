"""Rule `pretrain`: apply the retrain policy, then train under torchrun (damt.training.launch)."""

from pathlib import Path

import _damt_path  # noqa: F401

from damt.features import FEATURE_GROUPS
from damt.logs import rule_log
from damt.training.launch.job import launch
from damt.training.launch.resources import granted_gpus

with rule_log(snakemake.log[0], snakemake.output):
    launch(
        snakemake.params.pretrain,
        Path(snakemake.input.manifest),
        Path(snakemake.input.label_table),
        dict(zip(FEATURE_GROUPS, map(Path, snakemake.input.tables), strict=True)),
        Path(snakemake.params.run_dir),
        granted_gpus=granted_gpus(dict(snakemake.resources.items())),
        cores=snakemake.threads,
        log_file=snakemake.log[0],
        evaluation=snakemake.params.evaluation,
    )
