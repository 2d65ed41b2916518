# Shared set-up of the workflow: demo cohort, subject discovery, shard lists and targets.
# Functions only (rules live in the other .smk files); the logic itself is in `damt`.
import logging
import os

from damt.demo.cohort import ensure_demo_cohort
from damt.discovery import discover_for_workflow, discovery_paths, shard_file
from damt.qc import FEATURE_GROUPS, qc_params
from damt.training.launch import check_gpus

_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("damt: %(message)s"))
logging.getLogger("damt").addHandler(_handler)
logging.getLogger("damt").setLevel(logging.INFO)

OUT = config["outdir"]
RUN_DIR = f"{OUT}/pretrain/{config['pretrain']['run_name']}"


report: "../docs/report/workflow.rst"


wildcard_constraints:
    shard=r"[A-Za-z0-9._-]+",


if workflow.is_main_process:
    ensure_demo_cohort(config)

# Subjects are found at parse time: the discovery files are rewritten only when the cohort
# changes, and every aggregate rule takes them as input, so a new or removed subject reruns
# the cohort stages (and only the new subject's per-subject jobs).
DISCOVERY = discover_for_workflow(config, main_process=workflow.is_main_process)
SHARDS = list(DISCOVERY.shards())
DISCOVERY_FILES = discovery_paths(OUT)

# Snakemake scales a job's resources down to --resources without a word; fail before hours of
# other stages instead of training on fewer GPUs than configured (or in half precision on CPUs).
if workflow.is_main_process:
    _gpus = config["pretrain"]["gpus"]
    if "gpu" in workflow.global_resources:
        _gpus = min(workflow.global_resources["gpu"].value, _gpus)
    check_gpus(config, _gpus)


def stage_settings(section):
    """A per-subject stage's settings as a rerun trigger: all but ``threads``, which changes
    how fast a shard job runs, not what it computes."""
    return {k: v for k, v in config[section].items() if k != "threads"}


def shard_members(wildcards):
    """Membership file of the shard a per-subject job processes."""
    return shard_file(OUT, wildcards.shard)


def retrain_input(paths):
    """Pretrain inputs: ancient() under `pretrain.retrain: never`, so changes do not retrain."""
    if config["pretrain"]["retrain"] == "never":
        return (
            [ancient(p) for p in paths] if isinstance(paths, list) else ancient(paths)
        )
    return paths


def all_targets():
    """Final outputs of the workflow (the probe only when a phenotype table is configured)."""
    targets = [
        f"{OUT}/manifest.parquet",
        f"{RUN_DIR}/encoder.safetensors",
        f"{RUN_DIR}/loss_curves.png",
    ]
    if config["probe"]["phenotypes"]:
        targets.append(f"{OUT}/probe/probe.json")
    return targets
