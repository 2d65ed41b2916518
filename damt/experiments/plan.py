"""The experiment plan: named runs as overrides of ``pretrain`` (pure functions, no I/O).

``expand_runs`` turns the ``experiments`` config section into one override mapping per derived,
stable run name; ``scaling_subset`` picks the nested data-scaling subsets of the training subjects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from damt.model.spec import TASKS
from damt.split import unit_hash


class ExperimentError(ValueError):
    """An experiment plan that cannot be run; the message names the run and the key."""


def _check_overrides(run: str, overrides: Mapping, pretrain: Mapping) -> None:
    for key, value in overrides.items():
        if key not in pretrain:
            raise ExperimentError(f"experiments run {run!r}: unknown pretrain key {key!r}")
        if key == "tasks":
            for task in value:
                if task not in TASKS:
                    raise ExperimentError(
                        f"experiments run {run!r}: unknown task {task!r} in tasks"
                    )
    tasks = {**pretrain.get("tasks", {}), **overrides.get("tasks", {})}
    if not any(tasks.get(task, True) for task in TASKS):
        raise ExperimentError(f"experiments run {run!r}: tasks switches off every task")


def expand_runs(experiments: Mapping, pretrain: Mapping) -> dict[str, dict]:
    """Every run of the plan, by name (``<base>-s<seed>``), as overrides of ``pretrain``.

    Two ways of asking for the same run (same overrides) give one run: the first name wins.
    """
    base: dict[str, dict] = {}

    def add(name: str, overrides: dict) -> None:
        if name in base:
            raise ExperimentError(f"experiments run {name!r}: duplicate run name")
        base[name] = overrides

    for name, overrides in (experiments.get("runs") or {}).items():
        add(str(name), dict(overrides or {}))
    if experiments.get("ablation", "none") == "leave_one_task_out":
        if {} not in base.values():
            add("full", {})
        switched_on = [t for t in TASKS if pretrain.get("tasks", {}).get(t, True)]
        for task in switched_on:
            add(f"ablate-{task}", {"tasks": {task: False}})
    for size in experiments.get("data_scaling") or []:
        if int(size) <= 0:
            raise ExperimentError(f"experiments run 'data-{size}': data_scaling size must be > 0")
        add(f"data-{int(size)}", {"subjects": int(size)})
    for preset in experiments.get("model_scaling") or []:
        add(f"model-{preset}", {"preset": preset})

    unique: dict[str, dict] = {}
    for name, overrides in base.items():
        if overrides in unique.values():
            continue
        _check_overrides(name, {k: v for k, v in overrides.items() if k != "subjects"}, pretrain)
        unique[name] = overrides
    seeds = experiments.get("seeds") or [pretrain.get("seed", 0)]
    return {
        f"{name}-s{seed}": {**o, "seed": int(seed)} for name, o in unique.items() for seed in seeds
    }


def scaling_subset(training_ids: Sequence[str], size: int) -> list[str]:
    """The ``size`` training subjects with the smallest hash: nested across sizes and stable.

    Adding subjects changes a subset only by the newcomers that hash into it.
    """
    if size <= 0:
        raise ExperimentError(f"data_scaling size {size} must be > 0")
    if size > len(training_ids):
        raise ExperimentError(
            f"data_scaling size {size} is above the {len(training_ids)} training subjects"
        )
    return sorted(sorted(set(map(str, training_ids)), key=unit_hash)[:size])
