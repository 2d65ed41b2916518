"""The experiment plan (damt.experiments.plan): run names, roles, de-duplication, bad input,
data-scaling subsets (damt.split.scaling_subset)."""

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from damt.config import validate_config
from damt.experiments.plan import (
    ExperimentError,
    check_data_scaling,
    plan_runs,
    roles_table,
)
from damt.model.spec import TASKS
from damt.split import scaling_subset
from damt.training.launch.signature import signature, training_subjects
from tests.training_data import run_settings


@pytest.fixture(scope="module")
def base_config() -> dict:
    """config/config.yaml, validated (defaults filled), without an experiments section."""
    return validate_config(yaml.safe_load(Path("config/config.yaml").read_text()))


def plan(base: dict, **experiments) -> dict:
    config = copy.deepcopy(base)
    config["experiments"] = experiments
    return plan_runs(validate_config(config))


def test_the_shipped_example_plans_the_papers_runs(base_config):
    from damt.config import deep_update

    config = deep_update(
        copy.deepcopy(base_config),
        yaml.safe_load(Path("config/experiments.example.yaml").read_text()),
    )
    runs = plan_runs(validate_config(config))
    assert len(runs) == 17 * 3 and "data-45000-s2" in runs and "model-full-s0" not in runs
    assert ("model", "full") in runs["full-s0"].roles
    assert runs["dino-s1"].pretrain["contrastive"]["method"] == "dino"


def test_no_experiments_section_is_the_single_run(base_config):
    runs = plan_runs(base_config)
    assert list(runs) == [base_config["pretrain"]["run_name"]]
    (run,) = runs.values()
    assert run.pretrain == base_config["pretrain"] and run.roles == [("single", "")]


def test_leave_one_task_out_adds_full_and_one_run_per_task(base_config):
    runs = plan(base_config, ablation="leave_one_task_out", seeds=[0])
    assert list(runs) == ["full-s0"] + [f"ablate-{t}-s0" for t in TASKS]
    mim = runs["ablate-mim-s0"]
    assert mim.pretrain["tasks"]["mim"] is False and mim.pretrain["tasks"]["atlas"] is True
    assert mim.pretrain["run_name"] == "ablate-mim-s0" and mim.roles == [("ablation", "mim")]
    assert runs["full-s0"].pretrain["tasks"] == base_config["pretrain"]["tasks"]


def test_an_ablation_list_ablates_those_tasks_only(base_config):
    runs = plan(base_config, ablation=["mim", "atlas"], seeds=[3])
    assert list(runs) == ["full-s3", "ablate-mim-s3", "ablate-atlas-s3"]


def test_a_switched_off_task_gets_no_ablation(base_config):
    config = copy.deepcopy(base_config)
    config["pretrain"]["tasks"]["radiomics"] = False
    runs = plan(config, ablation="leave_one_task_out")
    assert "ablate-radiomics-s0" not in runs and len(runs) == len(TASKS)
    with pytest.raises(ExperimentError, match=r"'ablate-radiomics'.*switches off"):
        plan(config, ablation=["radiomics"])


def test_seeds_repeat_every_run_with_its_own_seed(base_config):
    runs = plan(base_config, data_scaling=[4, 8], seeds=[0, 1])
    assert set(runs) == {"data-4-s0", "data-4-s1", "data-8-s0", "data-8-s1"}
    data8 = runs["data-8-s1"].pretrain
    assert data8["seed"] == 1 and data8["subset_size"] == 8
    assert roles_table(runs)[0] == {"run": "data-4-s0", "kind": "data", "setting": "4", "seed": 0}


def test_the_same_run_asked_twice_is_one_run_with_both_roles(base_config):
    # The demo's preset is tiny: model-tiny is the full run; no_mim is the mim ablation.
    runs = plan(
        base_config,
        runs={"no_mim": {"tasks": {"mim": False}}},
        ablation="leave_one_task_out",
        model_scaling=["tiny", "full"],
    )
    assert "ablate-mim-s0" not in runs and "model-tiny-s0" not in runs
    assert runs["no_mim-s0"].roles == [("custom", "no_mim"), ("ablation", "mim")]
    assert runs["full-s0"].roles == [("full", ""), ("model", "tiny")]
    assert runs["model-full-s0"].pretrain["preset"] == "full"
    assert len(runs) == 1 + len(TASKS) + 1


def test_a_named_run_without_overrides_is_the_full_model(base_config):
    runs = plan(base_config, runs={"baseline": {}, "wide": {"balancing": "equal"}})
    assert runs["baseline-s0"].roles == [("full", "")]
    assert runs["wide-s0"].roles == [("custom", "wide")]


@pytest.mark.parametrize(
    ("experiments", "words"),
    [
        ({"runs": {"x": {"nope": 1}}}, ["'x'", "unknown pretrain key 'nope'"]),
        ({"runs": {"x": {"tasks": {"jigsaw": False}}}}, ["'x'", "unknown task 'jigsaw'"]),
        ({"runs": {"x": {"tasks": dict.fromkeys(TASKS, False)}}}, ["'x'", "every task"]),
        ({"data_scaling": [0]}, ["'data-0'", "at least 1"]),
        ({"runs": {"ablate-mim": {"epochs": 2}}, "ablation": "leave_one_task_out"}, ["duplicate"]),
        ({"model_scaling": ["huge"]}, ["'model-huge'", "'huge'"]),
        ({"runs": {"x": {"epochs": "many"}}}, ["'x'", "pretrain.epochs"]),
        ({"runs": {"x": {"seed": 3}}}, ["'x'", "'seed'", "experiments.seeds"]),
        ({"runs": {"x": {"run_name": "y"}}}, ["'x'", "'run_name'"]),
        ({"runs": {"x": {"nodes": 2}}}, ["'x'", "'nodes'"]),
        ({"runs": {"a b": {}}}, ["'a b'", "run name"]),
        ({"ablation": "leave_one_task_out", "seeds": [1, 1]}, ["repeats a seed"]),
        ({"ablation": ["jigsaw"]}, ["'ablate-jigsaw'", "does not exist"]),
        ({"ablation": ["mim", "mim"]}, ["'ablate-mim'", "duplicate"]),
    ],
)
def test_bad_plans_stop_naming_the_run_and_the_key(base_config, experiments, words):
    with pytest.raises(ExperimentError) as err:
        plan(base_config, **experiments)
    for word in words:
        assert word in str(err.value)


def test_a_seed_of_the_random_init_baseline_is_refused(base_config):
    with pytest.raises(ExperimentError, match=r"experiments.seeds holds \[1002\]"):
        plan(base_config, ablation=["mim"], seeds=[0, 1002])


def test_a_data_scaling_size_above_the_training_subjects_is_refused(base_config):
    runs = plan(base_config, data_scaling=[4, 13])
    check_data_scaling({k: v for k, v in runs.items() if k.startswith("data-4")}, 12)
    with pytest.raises(ExperimentError, match=r"'data-13-s0'.*13 but only 12"):
        check_data_scaling(runs, 12)


def test_subsets_are_nested_and_stable_when_subjects_are_added():
    ids = [f"sub-{i:03d}" for i in range(100)]
    small, large = scaling_subset(ids, 10), scaling_subset(ids, 40)
    assert set(small) <= set(large) and len(small) == 10 and small == sorted(small)
    grown_ids = ids + [f"sub-{i:03d}" for i in range(100, 150)]
    grown = scaling_subset(grown_ids, 10)
    # Newcomers enter only by hashing in; whoever they displace had the largest hashes.
    newcomers = set(grown) - set(small)
    assert newcomers and all(int(s[4:]) >= 100 for s in newcomers)
    assert set(grown) - newcomers <= set(small)
    assert set(grown) <= set(scaling_subset(grown_ids, 40))
    assert scaling_subset(list(reversed(ids)), 10) == small
    assert scaling_subset(ids, None) == ids
    with pytest.raises(ValueError, match="is 4 but only 3 subjects train"):
        scaling_subset(["a", "b", "c"], 4)


def test_the_subset_is_what_the_signature_and_the_trainer_see(tmp_path):
    from damt.training.data import load_training_data
    from tests.training_data import write_training_set

    files = write_training_set(tmp_path / "set", n_subjects=6)
    tables = {}
    frame = pd.read_parquet(files.manifest)
    trainers = training_subjects(files.manifest)
    subset = training_subjects(files.manifest, 3)
    assert len(subset) == 3 and set(subset) <= set(trainers)
    assert subset == scaling_subset(frame.loc[frame["subject_id"].isin(trainers), "subject_id"], 3)
    data = load_training_data(files.manifest, files.label_table, tables, subjects=3)
    assert data.subjects == subset and data.summary["data_scaling_subset"] == 3
    inputs = (files.manifest, files.label_table, tables)
    every = signature(run_settings(subset_size=None), *inputs)
    assert every == signature(run_settings(), *inputs)
    three = signature(run_settings(subset_size=3), *inputs)
    assert three["n_subjects"] == 3 and three["subjects"] != every["subjects"]
    with pytest.raises(ValueError, match="is 99 but only 6 subjects train"):
        training_subjects(files.manifest, 99)


def test_training_cost_sums_every_recorded_epoch():
    import torch

    from damt.training.export import training_cost

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
