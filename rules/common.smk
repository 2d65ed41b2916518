# Shared set-up of the workflow: results paths, subject discovery, shard lists and targets.
# Functions only (rules live in the other .smk files); the logic is in `damt` (damt.paths,
# damt.discovery.workflow, damt.demo.cohort, damt.training.launch.checks).
#
# Parsing the workflow WRITES FILES, on purpose: the demo cohort (when `demo.enabled`, so that
# `make demo` needs no download) and the discovery files under results/discovery/. Subjects are
# found at parse time, and the discovery files are rewritten only when the cohort changes; every
# cohort rule takes them as input, so a new or removed subject reruns the cohort stages (and only
# the new subject's per-subject jobs).
import logging
import os
import re
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from damt.demo.cohort import ensure_demo_cohort
from damt.discovery.workflow import discover_for_workflow
from damt.experiments.plan import (
    DATA,
    MODEL,
    ABLATION,
    check_data_scaling,
    plan_runs,
    roles_table,
)
from damt.features import FEATURE_GROUPS, TASK_FEATURE_GROUPS
from damt.paths import ENCODER_FILE, MODEL_CARD_FILE, MONAI_SSL_FILE, ResultPaths
from damt.qc.checks import qc_params
from damt.qc.severity import check_severity
from damt.split import TRAIN, split_from_config
from damt.stages.cache import PREPROCESSING_KEYS
from damt.training.launch.checks import (
    LaunchError,
    check_gpus,
    check_nodes,
    parse_run_settings,
)
from damt.training.launch.resources import pretrain_resources

_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("damt: %(message)s"))
logging.getLogger("damt").addHandler(_handler)
logging.getLogger("damt").setLevel(logging.INFO)

OUT = config["outdir"]
PATHS = ResultPaths(OUT)
# Every pretraining run, by name: the `experiments` plan, or the one run `pretrain.run_name`
# (damt.experiments.plan). The pretrain, training_report and probe rules take a {run} wildcard.
RUNS = plan_runs(config)
EXPERIMENTS = "experiments" in config
# Fine-tuning runs per run when a task is configured (rules/finetune.smk).
FINETUNE = bool(config["finetune"]["targets"] or config["finetune"]["segmentation"]["enabled"])


report: "../docs/report/workflow.rst"


wildcard_constraints:
    shard=r"[A-Za-z0-9._-]+",
    run="|".join(map(re.escape, RUNS)),


def _checked(run_name, check, *args):
    """``check(*args)``; its LaunchError names the run of an experiment plan."""
    try:
        return check(*args)
    except LaunchError as exc:
        if not EXPERIMENTS:
            raise
        raise LaunchError(f"experiments run {run_name!r}: {exc}") from exc


# Every run's `pretrain` section parsed once, before any job runs, with the trainer's own
# cross-key checks (warmup < epochs, crop sizes, ...; damt.training.settings): the checks below
# and the pretrain rule read these settings.
SETTINGS = {name: _checked(name, parse_run_settings, run.pretrain) for name, run in RUNS.items()}

# Snakemake scales a job's resources down to --resources without a word; fail before hours of
# other stages instead of training on fewer GPUs than configured (or in half precision on CPUs).
# Several nodes ask SLURM for GPUs per node (a `gres`), outside the local `gpu` limit.
if workflow.is_main_process:
    check_severity(config["qc"]["severity"])
    for _name, _settings in SETTINGS.items():
        _gpus = _settings.gpus
        if "gpu" in workflow.global_resources and _settings.nodes == 1:
            _gpus = min(workflow.global_resources["gpu"].value, _gpus)
        _checked(_name, check_gpus, _settings, _gpus)
    if EXPERIMENTS and not config["probe"]["phenotypes"]:
        raise WorkflowError(
            "experiments: the summary scores every run with the probe, which needs "
            "probe.phenotypes (a table of the targets); set it or remove the experiments section"
        )


# pretrain.nodes > 1 needs SLURM: the jobs go there (the slurm executor) or Snakemake runs in an
# allocation. Which executor runs the jobs is known only once parsing is done: this runs before
# the first job starts (not in dry runs; the pretrain job checks again before it moves anything).
onstart:
    for _name, _settings in SETTINGS.items():
        _checked(_name, check_nodes, _settings, os.environ, not workflow.local_exec)


if workflow.is_main_process:
    ensure_demo_cohort(config)

DISCOVERY = discover_for_workflow(config, main_process=workflow.is_main_process)
SHARDS = list(DISCOVERY.shards())


def candidate_trainers():
    """How many discovered subjects are not held out: the most any run can train on (QC may
    exclude more; the pretrain job checks its data-scaling subset again)."""
    frame = pd.DataFrame(
        {
            "subject_id": [s.subject_id for s in DISCOVERY.subjects],
            "participant": [s.participant for s in DISCOVERY.subjects],
        }
    )
    return int((split_from_config(frame, config["evaluation"]) == TRAIN).sum())


if workflow.is_main_process and any(s.subset_size for s in SETTINGS.values()):
    check_data_scaling(RUNS, candidate_trainers())


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


def pretrain_section(wildcards):
    """Params function: the `pretrain` section of the job's run (overrides merged), which the
    job parses into its run settings (SETTINGS here)."""
    return RUNS[wildcards.run].pretrain


def preprocessing_settings(wildcards):
    """Params function: the `cache` keys that made the training cache, for the model card."""
    return {k: config["cache"][k] for k in PREPROCESSING_KEYS}


def pretrain_inputs(wildcards):
    """A run's training inputs; ancient() under `retrain: never`, so changes do not retrain.

    The training cache is there through the manifest (it needs every cache shard): listing the
    shards again would give each run hundreds of edges (27,000 for the paper's plan at 60,000
    subjects) and slow the DAG down for nothing."""
    inputs = {
        "manifest": PATHS.manifest(),
        "tables": [PATHS.normalized_table(g) for g in FEATURE_GROUPS],
        "label_table": config["cache"]["label_table"],
    }
    if SETTINGS[wildcards.run].retrain != "never":
        return inputs
    return {
        k: [ancient(p) for p in v] if isinstance(v, list) else ancient(v) for k, v in inputs.items()
    }


def run_resources():
    """The pretrain rule's resources (damt.training.launch.resources), per run: each
    run asks for its own `gpus`, so runs compete for --resources gpu=N."""
    keys = sorted({k for settings in SETTINGS.values() for k in pretrain_resources(settings)})
    return {
        key: lambda wildcards, key=key: pretrain_resources(SETTINGS[wildcards.run])[key]
        for key in keys
    }


def summary_outputs():
    """The summary's tables and the figures of the kinds the plan has (report items)."""
    outputs = {
        "summary": report(
            PATHS.experiments("summary.tsv"),
            category="Experiments",
            caption="../docs/report/experiments_summary.rst",
        ),
        "runs": PATHS.experiments("runs.tsv"),
    }
    if FINETUNE:
        outputs["finetune"] = report(
            PATHS.experiments("finetune.tsv"),
            category="Experiments",
            caption="../docs/report/experiments_finetune.rst",
        )
    kinds = {kind for run in RUNS.values() for kind, _ in run.roles}
    figures = {
        "ablation": ABLATION in kinds,
        "data_scaling": DATA in kinds,
        "model_scaling": MODEL in kinds,
        "training_cost": True,
    }
    for name, wanted in figures.items():
        if wanted:
            outputs[name] = report(
                PATHS.experiments(f"{name}.png"),
                category="Experiments",
                caption=f"../docs/report/experiments_{name}.rst",
            )
    return outputs


def all_targets():
    """Final outputs of the workflow: every run's weights and figures, its probe when a phenotype
    table is configured, its fine-tuning when a task is, and the summary of an experiment plan."""
    targets = [PATHS.manifest()]
    for run in RUNS:
        targets += [PATHS.run_file(run, ENCODER_FILE), PATHS.run_file(run, "loss_curves.png")]
        if config["probe"]["phenotypes"]:
            targets.append(PATHS.probe(run, "probe.json"))
        if FINETUNE:
            targets.append(PATHS.finetune(run, "summary.tsv"))
    if EXPERIMENTS:
        targets.append(PATHS.experiments("summary.tsv"))
    return targets
