"""Rule `pretrain`: apply the retrain policy, then train under torchrun (damt.training.launch).

A run stopped by a stop signal (preemption, time limit) ends the job with exit status 75 after
its checkpoint is written (and, on SLURM, the job requeued): running it again resumes it.
"""

import sys
from pathlib import Path

import _damt_path  # noqa: F401

from damt.features import FEATURE_GROUPS
from damt.logs import rule_log
from damt.training.launch.job import PretrainingStopped, launch
from damt.training.launch.resources import granted_gpus
from damt.training.process import STOPPED_EXIT

try:
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
            preprocessing=snakemake.params.preprocessing,
        )
except PretrainingStopped as stopped:
    # Also in the job's own output: a requeued job's rule log starts anew.
    print(f"pretrain: {stopped}", file=sys.stderr)
    sys.exit(STOPPED_EXIT)
