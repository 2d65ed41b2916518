"""The experiment plan (damt.experiments): run names, de-duplication, bad input, subsets."""

import pytest

from damt.experiments.plan import ExperimentError, expand_runs, scaling_subset
from damt.model.spec import TASKS

PRETRAIN = {"preset": "tiny", "seed": 0, "tasks": {}, "epochs": 1}


def test_leave_one_task_out_adds_full_and_one_run_per_task():
    runs = expand_runs({"ablation": "leave_one_task_out", "seeds": [0]}, PRETRAIN)
    assert len(runs) == 8
    assert runs["full-s0"] == {"seed": 0}
    assert runs["ablate-mim-s0"] == {"tasks": {"mim": False}, "seed": 0}


def test_same_run_asked_twice_is_one_run_and_seeds_repeat():
    plan = {"runs": {"no_mim": {"tasks": {"mim": False}}}, "ablation": "leave_one_task_out"}
    runs = expand_runs({**plan, "seeds": [0, 1]}, PRETRAIN)
    assert "ablate-mim-s0" not in runs and "no_mim-s1" in runs
    assert len(runs) == 2 * len(TASKS) + 2


def test_data_and_model_scaling_names():
    runs = expand_runs({"data_scaling": [4, 8], "model_scaling": ["full"], "seeds": [1]}, PRETRAIN)
    assert set(runs) == {"data-4-s1", "data-8-s1", "model-full-s1"}


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        ({"runs": {"x": {"nope": 1}}}, ["'x'", "'nope'"]),
        ({"runs": {"x": {"tasks": {"jigsaw": False}}}}, ["'x'", "'jigsaw'"]),
        ({"runs": {"x": {"tasks": dict.fromkeys(TASKS, False)}}}, ["'x'", "every task"]),
        ({"runs": {"full": {}}, "ablation": "leave_one_task_out", "data_scaling": [0]}, ["data-0"]),
        ({"runs": {"ablate-mim": {"epochs": 2}}, "ablation": "leave_one_task_out"}, ["duplicate"]),
    ],
)
def test_bad_plans_name_run_and_key(plan, words):
    with pytest.raises(ExperimentError) as err:
        expand_runs(plan, PRETRAIN)
    for word in words:
        assert word in str(err.value)


def test_subsets_nested_and_stable_when_subjects_are_added():
    ids = [f"sub-{i:03d}" for i in range(100)]
    small, large = scaling_subset(ids, 10), scaling_subset(ids, 40)
    assert set(small) <= set(large) and len(small) == 10
    grown = scaling_subset(ids + [f"sub-{i:03d}" for i in range(100, 150)], 10)
    newcomers = set(grown) - set(small)
    assert newcomers and all(int(s[4:]) >= 100 for s in newcomers)
    assert scaling_subset(list(reversed(ids)), 10) == small


def test_subset_above_training_count_is_an_error():
    with pytest.raises(ExperimentError, match="above the 3 training subjects"):
        scaling_subset(["a", "b", "c"], 4)


def test_schema_fills_experiment_defaults_and_leaves_a_plain_config_alone():
    from pathlib import Path

    import yaml

    from damt.config import validate_config

    config = yaml.safe_load(Path("config/config.yaml").read_text())
    assert "experiments" not in validate_config(dict(config))
    config["experiments"] = {"ablation": "leave_one_task_out"}
    plan = validate_config(config)["experiments"]
    assert plan["seeds"] == [0] and plan["data_scaling"] == []
    assert len(expand_runs(plan, PRETRAIN)) == 8


def test_training_cost_sums_every_recorded_epoch():
    import torch

    from damt.training.loop import training_cost

    records = [
        {"epoch": 0, "epoch_time_s": 10.0, "samples_per_s": 2.0},
        {"epoch": 1, "epoch_time_s": 30.0, "samples_per_s": 4.0},
    ]
    cost = training_cost(records, torch.nn.Linear(3, 2), world_size=4, device="cuda")
    assert cost["encoder_parameters"] == 8
    assert cost["train_seconds"] == 40.0
    assert cost["samples_per_s"] == pytest.approx((20 + 120) / 40)
    assert cost["device_hours"] == pytest.approx(40 * 4 / 3600)
    assert cost["epochs_recorded"] == 2
    assert training_cost([], torch.nn.Linear(1, 1), 1, "cpu")["samples_per_s"] is None
