"""Rule `training_report`: loss curves and learned task weights of the pretraining run."""

import _damt_path  # noqa: F401

from damt.logs import rule_log
from damt.training.report import plot_training

with rule_log(snakemake.log[0], snakemake.output):
    plot_training(snakemake.params.run_dir, snakemake.output.curves, snakemake.output.weights)
