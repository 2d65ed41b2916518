"""The experiment plan: the config's ``experiments`` section as named pretraining runs (pure
functions, no I/O).

Each run is the ``pretrain`` section with a set of overrides: a named run's own, one switched-off
task (``ablation: leave_one_task_out``), a data-scaling subset (``pretrain.subset_size``) or a
preset (``model_scaling``), repeated per seed. Run names are derived and stable
(``ablate-mim-s0``, ``data-5000-s1``, ``model-full-s2``, ``<name>-s<seed>``). Two ways of
asking for the same effective settings give one run (the first name wins) that keeps every
*role* it was asked for, so the summary finds, e.g., ``full-s0`` both as the ablations'
reference and as the model-scaling point of its preset.

Without an ``experiments`` section the plan is today's single run, named by
``pretrain.run_name``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from damt.config import ConfigError, deep_update, validate_config
from damt.io import stable_hash
from damt.model.spec import TASKS

# Kinds of a run's roles (the summary's `kind` column); `single`: no experiments section.
SINGLE, FULL, CUSTOM = "single", "full", "custom"
ABLATION, DATA, MODEL = "ablation", "data", "model"
# Keys a run may not override: its folder comes from its name, its seed from `seeds`, and the
# node count shapes the rule's resources, which are one set for every run.
FIXED_KEYS = {
    "run_name": "the run folder is named after the run",
    "seed": "seeds come from experiments.seeds",
    "nodes": "pretrain.nodes is one setting for every run of an experiment",
}
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class ExperimentError(ValueError):
    """An experiment plan that cannot be run; the message names the run and the key."""


@dataclass
class Run:
    """One pretraining run of the plan: its effective ``pretrain`` section and its roles."""

    name: str
    pretrain: dict
    roles: list[tuple[str, str]] = field(default_factory=list)  # (kind, varied setting)

    @property
    def seed(self) -> int:
        """The run's seed (its ``pretrain.seed``)."""
        return int(self.pretrain["seed"])

    def role_rows(self) -> list[dict]:
        """One row per role: run, kind, setting, seed (what the summary groups by)."""
        return [
            {"run": self.name, "kind": kind, "setting": setting, "seed": self.seed}
            for kind, setting in self.roles
        ]


def _base_runs(experiments: Mapping, pretrain: Mapping) -> list[tuple[str, dict, str, str]]:
    """(base name, overrides, kind, setting) for every run asked for, before seeds and merging."""
    asked: list[tuple[str, dict, str, str]] = []
    for name, overrides in experiments["runs"].items():
        # A run without overrides is the full model, whatever its name.
        kind, setting = (CUSTOM, str(name)) if overrides else (FULL, "")
        asked.append((str(name), dict(overrides or {}), kind, setting))
    ablation = experiments["ablation"]
    switched_on = [t for t in TASKS if pretrain["tasks"][t]]
    if ablation != "none":
        ablated = switched_on if ablation == "leave_one_task_out" else list(ablation)
        asked.append(("full", {}, FULL, ""))
        for task in ablated:
            if ablated.count(task) > 1:
                raise ExperimentError(
                    f"experiments run 'ablate-{task}': experiments.ablation lists {task!r} twice "
                    "(a duplicate run name)"
                )
            if task not in switched_on:
                raise ExperimentError(
                    f"experiments run 'ablate-{task}': experiments.ablation names task {task!r}, "
                    + (
                        "which pretrain.tasks switches off"
                        if task in TASKS
                        else "which does not exist"
                    )
                    + f" (the switched-on tasks are {', '.join(switched_on)})"
                )
            asked.append((f"ablate-{task}", {"tasks": {task: False}}, ABLATION, task))
    for size in experiments["data_scaling"]:
        if int(size) <= 0:
            raise ExperimentError(
                f"experiments run 'data-{size}': data_scaling size {size} must be at least 1"
            )
        asked.append((f"data-{int(size)}", {"subset_size": int(size)}, DATA, str(int(size))))
    presets = pretrain["presets"]
    for preset in experiments["model_scaling"]:
        if preset not in presets:
            raise ExperimentError(
                f"experiments run 'model-{preset}': model_scaling names preset {preset!r}, "
                f"which pretrain.presets lacks (it has {', '.join(sorted(presets))})"
            )
        asked.append((f"model-{preset}", {"preset": preset}, MODEL, str(preset)))
    return asked


def _effective(name: str, overrides: Mapping, pretrain: Mapping) -> dict:
    """``pretrain`` with ``overrides`` merged in and validated; errors name the run and key."""
    if not _NAME.match(name):
        raise ExperimentError(
            f"experiments run {name!r}: a run name may hold only letters, digits, '.', '_', '-'"
        )
    for key, value in overrides.items():
        if key not in pretrain:
            raise ExperimentError(f"experiments run {name!r}: unknown pretrain key {key!r}")
        if key in FIXED_KEYS:
            raise ExperimentError(
                f"experiments run {name!r}: pretrain key {key!r} cannot be overridden "
                f"({FIXED_KEYS[key]})"
            )
        if key == "tasks":
            for task in value or {}:
                if task not in TASKS:
                    raise ExperimentError(
                        f"experiments run {name!r}: unknown task {task!r} in tasks "
                        f"(the tasks are {', '.join(TASKS)})"
                    )
    merged = deep_update(copy.deepcopy(dict(pretrain)), overrides)
    try:
        source = f"experiments run {name!r}"
        validate_config({"pretrain": merged}, source=source, sections=("pretrain",))
    except ConfigError as exc:
        raise ExperimentError(str(exc)) from exc
    if not any(merged["tasks"].get(task, True) for task in TASKS):
        raise ExperimentError(f"experiments run {name!r}: its tasks switch off every task")
    return merged


def plan_runs(config: Mapping) -> dict[str, Run]:
    """Every run of the config, by name: the plan of ``experiments``, or the single run."""
    pretrain = config["pretrain"]
    experiments = config.get("experiments")
    if experiments is None:
        name = pretrain["run_name"]
        return {name: Run(name, copy.deepcopy(dict(pretrain)), [(SINGLE, "")])}

    bases: dict[str, tuple[dict, list[tuple[str, str]]]] = {}
    by_settings: dict[str, str] = {}
    for name, overrides, kind, setting in _base_runs(experiments, pretrain):
        merged = _effective(name, overrides, pretrain)
        key = stable_hash({k: v for k, v in merged.items() if k != "run_name"})
        if key in by_settings:  # the same run asked for twice: one run, both roles
            bases[by_settings[key]][1].append((kind, setting))
            continue
        if name in bases:
            raise ExperimentError(
                f"experiments run {name!r}: duplicate run name (another run of the plan has it "
                "with other settings)"
            )
        bases[name] = (merged, [(kind, setting)])
        by_settings[key] = name

    if pretrain["nodes"] > 1 and len({bool(m["gpus"]) for m, _ in bases.values()}) > 1:
        raise ExperimentError(
            "experiments: with pretrain.nodes > 1 every run trains on GPUs or every run on "
            "CPUs (the runs share one set of SLURM resources); a run overrides pretrain.gpus"
        )
    seeds = experiments["seeds"] or [pretrain["seed"]]
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"experiments.seeds repeats a seed: {list(seeds)}")
    baseline = set(seeds) & set(config["probe"]["random_init_seeds"])
    if baseline:
        raise ExperimentError(
            f"experiments.seeds holds {sorted(baseline)}, which probe.random_init_seeds uses for "
            "the random-init baseline: a run's probe would compare it with its own initialisation"
        )
    runs: dict[str, Run] = {}
    for base, (merged, roles) in bases.items():
        for seed in seeds:
            name = f"{base}-s{seed}"
            settings = {**copy.deepcopy(merged), "seed": int(seed), "run_name": name}
            runs[name] = Run(name, settings, list(roles))
    return runs


def check_data_scaling(runs: Mapping[str, Run], n_training: int) -> None:
    """Refuse, at parse time, a run whose data-scaling subset exceeds the ``n_training``
    subjects that can train (discovered and not held out; QC may exclude more later, and the
    pretrain job checks again)."""
    for run in runs.values():
        size = run.pretrain["subset_size"]
        if size is not None and size > n_training:
            raise ExperimentError(
                f"experiments run {run.name!r}: pretrain.subset_size is {size} but only "
                f"{n_training} discovered subjects are not held out for evaluation; lower the "
                "data_scaling size or add subjects"
            )


def roles_table(runs: Mapping[str, Run]) -> list[dict]:
    """Every run's role rows, in plan order (the summary's ``params``)."""
    return [row for run in runs.values() for row in run.role_rows()]
