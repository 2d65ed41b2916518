# Shared set-up of the workflow: results paths, subject discovery, shard lists and targets.
# Functions only (rules live in the other .smk files); the logic is in `damt` (damt.paths,
# damt.discovery, damt.demo.cohort, damt.training.launch.check_run_settings).
#
# Parsing the workflow WRITES FILES, on purpose: the demo cohort (when `demo.enabled`, so that
# `make demo` needs no download) and the discovery files under results/discovery/. Subjects are
# found at parse time, and the discovery files are rewritten only when the cohort changes; every
# cohort rule takes them as input, so a new or removed subject reruns the cohort stages (and only
# the new subject's per-subject jobs).
import logging
import os
from pathlib import Path

from damt.demo.cohort import ensure_demo_cohort
from damt.discovery import discover_for_workflow
from damt.features import FEATURE_GROUPS, TASK_FEATURE_GROUPS
from damt.paths import ENCODER_FILE, MODEL_CARD_FILE, ResultPaths
from damt.qc.checks import check_severity, qc_params
from damt.training.launch import check_nodes, check_run_settings, pretrain_resources

_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("damt: %(message)s"))
logging.getLogger("damt").addHandler(_handler)
logging.getLogger("damt").setLevel(logging.INFO)

OUT = config["outdir"]
PATHS = ResultPaths(OUT)
RUN = config["pretrain"]["run_name"]


report: "../docs/report/workflow.rst"


wildcard_constraints:
    shard=r"[A-Za-z0-9._-]+",


# Every check of the run's settings before any job runs (the trainer's own cross-key checks:
# warmup < epochs, crop sizes, ...; qc.severity codes). Snakemake scales a job's resources down
# to --resources without a word; fail before hours of other stages instead of training on fewer
# GPUs than configured (or in half precision on CPUs).
# Several nodes ask SLURM for GPUs per node (a `gres`), outside the local `gpu` limit.
if workflow.is_main_process:
    check_severity(config["qc"]["severity"])
    _gpus = config["pretrain"]["gpus"]
    if "gpu" in workflow.global_resources and config["pretrain"]["nodes"] == 1:
        _gpus = min(workflow.global_resources["gpu"].value, _gpus)
    check_run_settings(config, _gpus)


# pretrain.nodes > 1 needs SLURM: the jobs go there (the slurm executor) or Snakemake runs in an
# allocation. Which executor runs the jobs is known only once parsing is done: this runs before
# the first job starts (not in dry runs; the pretrain job checks again before it moves anything).
onstart:
    check_nodes(config["pretrain"], os.environ, cluster_executor=not workflow.local_exec)


if workflow.is_main_process:
    ensure_demo_cohort(config)

DISCOVERY = discover_for_workflow(config, main_process=workflow.is_main_process)
SHARDS = list(DISCOVERY.shards())


def stage_settings(section):
    """A per-subject stage's settings as a rerun trigger: all but ``threads``, which changes
    how fast a shard job runs, not what it computes."""
    return {k: v for k, v in config[section].items() if k != "threads"}


def shard_members(wildcards):
    """Membership file of the shard a per-subject job processes."""
    return PATHS.shard_members(wildcards.shard)


def results_dir_above(output_name, levels):
    """Params function: the results folder, ``levels`` folders above output ``output_name``
    (derived from the output rather than given as a path prefix, as `snakemake --lint` asks)."""
    return lambda wildcards, output: str(Path(output[output_name]).parents[levels - 1])


def stage_summaries(stage):
    """Every shard summary of a per-subject stage."""
    return [PATHS.stage_summary(stage, shard) for shard in SHARDS]


def retrain_input(paths):
    """Pretrain inputs: ancient() under `pretrain.retrain: never`, so changes do not retrain."""
    if config["pretrain"]["retrain"] == "never":
        return [ancient(p) for p in paths] if isinstance(paths, list) else ancient(paths)
    return paths


def all_targets():
    """Final outputs of the workflow (the probe only when a phenotype table is configured)."""
    targets = [
        PATHS.manifest(),
        PATHS.run_file(RUN, ENCODER_FILE),
        PATHS.run_file(RUN, "loss_curves.png"),
    ]
    if config["probe"]["phenotypes"]:
        targets.append(PATHS.probe("probe.json"))
    return targets
