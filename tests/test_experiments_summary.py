"""The experiment summary (damt.experiments.summary): tables, deltas, cost, figures, bad input.

Probe tables and model cards are written in the formats of damt.probe and the model card with
values chosen so that every delta is checkable by hand; tests/test_experiments_workflow.py runs
the summary on real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from damt.experiments.plan import ExperimentError
from damt.experiments.summary import (
    FINETUNE_COLUMNS,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    finetune_deltas,
    summarize,
    write_summary,
)
from damt.finetune.summary import SUMMARY_COLUMNS as FINETUNE_SUMMARY
from damt.probe.targets import TSV_COLUMNS


def probe_table(path: Path, age_mae: float, sex_bacc: float, random_mae: float = 20.0) -> Path:
    """A probe.tsv: two fractions (0.5 scores are worse), linear and knn, three feature sets."""
    rows = []
    for fraction, worse in ((0.5, 5.0), (1.0, 0.0)):
        for features, mae, bacc in (
            ("pretrained", age_mae, sex_bacc),
            ("random_init", random_mae, 0.5),
            ("morphometry", 8.0, 0.9),
        ):
            for method in ("linear", "knn"):
                rows.append(["age", features, method, fraction, "mae", mae + worse, mae - 2,
                             mae + 2, 40, 10, "holdout"])  # fmt: skip
                rows.append(["sex", features, method, fraction, "balanced_accuracy", bacc,
                             bacc - 0.1, bacc + 0.1, 40, 10, "holdout"])  # fmt: skip
    pd.DataFrame(rows, columns=TSV_COLUMNS).to_csv(path, sep="\t", index=False)
    return path


def model_card(path: Path, subjects: int, params: int, seconds: float, cost: bool = True) -> Path:
    pretraining = {"config": {"preset": "tiny"}, "world_size": 2, "epochs": 3, "device": "cuda"}
    if cost:
        pretraining["cost"] = {
            "encoder_parameters": params, "train_seconds": seconds, "samples_per_s": 4.0,
            "device_hours": seconds * 2 / 3600, "device": "cuda", "epochs_recorded": 3,
        }  # fmt: skip
    path.write_text(json.dumps({"data": {"subjects": subjects}, "pretraining": pretraining}))
    return path


# run -> (age MAE, sex balanced accuracy, subjects, parameters, seconds)
RUNS = {
    "full-s0": (10.0, 0.80, 100, 1000, 3600.0),
    "full-s1": (12.0, 0.70, 100, 1000, 3000.0),
    "ablate-mim-s0": (11.0, 0.75, 100, 1000, 3400.0),
    "ablate-mim-s1": (15.0, 0.60, 100, 1000, 2900.0),
    "data-10-s0": (18.0, 0.55, 10, 1000, 360.0),
    "model-full-s0": (9.0, 0.85, 100, 9000, 7200.0),
    "solo-s2": (14.0, 0.65, 100, 1000, 100.0),
}
ROLES = [
    {"run": "full-s0", "kind": "full", "setting": "", "seed": 0},
    {"run": "full-s0", "kind": "model", "setting": "tiny", "seed": 0},
    {"run": "full-s1", "kind": "full", "setting": "", "seed": 1},
    {"run": "ablate-mim-s0", "kind": "ablation", "setting": "mim", "seed": 0},
    {"run": "ablate-mim-s1", "kind": "ablation", "setting": "mim", "seed": 1},
    {"run": "data-10-s0", "kind": "data", "setting": "10", "seed": 0},
    {"run": "model-full-s0", "kind": "model", "setting": "full", "seed": 0},
    {"run": "solo-s2", "kind": "custom", "setting": "solo", "seed": 2},
]


@pytest.fixture
def files(tmp_path: Path) -> tuple[dict, dict]:
    probes, cards = {}, {}
    for run, (mae, bacc, subjects, params, seconds) in RUNS.items():
        probes[run] = probe_table(tmp_path / f"{run}.tsv", mae, bacc)
        cards[run] = model_card(tmp_path / f"{run}.json", subjects, params, seconds)
    return probes, cards


def pick(frame: pd.DataFrame, **where) -> pd.DataFrame:
    for key, value in where.items():
        frame = frame[frame[key] == value]
    return frame


def test_summary_rows_deltas_and_roles(files):
    summary, runs = summarize(ROLES, *files)
    assert list(summary.columns) == SUMMARY_COLUMNS and list(runs.columns) == RUN_COLUMNS
    # 8 roles × 2 targets × 3 feature sets × 2 methods, at the largest fraction only.
    assert len(summary) == 8 * 12
    age = pick(summary, target="age", features="pretrained", method="linear")
    by_run = age.set_index(["run", "kind"])
    assert by_run.loc[("ablate-mim-s0", "ablation"), "mean"] == 11.0  # not the 0.5 fraction's 16
    assert by_run.loc[("ablate-mim-s0", "ablation"), "delta_to_full"] == pytest.approx(1.0)
    assert by_run.loc[("ablate-mim-s1", "ablation"), "delta_to_full"] == pytest.approx(3.0)
    assert by_run.loc[("full-s0", "full"), "delta_to_full"] == 0
    assert by_run.loc[("model-full-s0", "model"), "delta_to_full"] == pytest.approx(-1.0)
    assert pd.isna(by_run.loc[("solo-s2", "custom"), "delta_to_full"])  # no full run of seed 2
    # The full run is also the model-scaling point of its preset.
    assert by_run.loc[("full-s0", "model"), "mean"] == 10.0
    sex = pick(summary, run="ablate-mim-s1", target="sex", features="pretrained", method="knn")
    assert sex["delta_to_full"].item() == pytest.approx(-0.1)
    assert set(summary["features"]) == {"pretrained", "random_init", "morphometry"}


def test_runs_table_has_each_runs_cost_per_role(files):
    _, runs = summarize(ROLES, *files)
    assert len(runs) == len(ROLES)
    model = runs.set_index(["run", "kind"]).loc[("model-full-s0", "model")]
    assert model["encoder_parameters"] == 9000 and model["subjects"] == 100
    assert model["device_hours"] == pytest.approx(4.0) and model["world_size"] == 2
    assert model["preset"] == "tiny" and model["device"] == "cuda"


def test_a_card_from_before_the_cost_section_leaves_cost_empty(files, tmp_path):
    probes, cards = files
    cards["solo-s2"] = model_card(tmp_path / "old.json", 100, 0, 0, cost=False)
    _, runs = summarize(ROLES, probes, cards)
    old = runs.set_index("run").loc["solo-s2"]
    assert pd.isna(old["device_hours"]) and pd.isna(old["encoder_parameters"])
    assert old["subjects"] == 100


def test_every_figure_is_written(files, tmp_path):
    names = ["ablation", "data_scaling", "model_scaling", "training_cost"]
    outputs = {"summary": tmp_path / "s.tsv", "runs": tmp_path / "r.tsv"}
    outputs |= {name: tmp_path / f"{name}.png" for name in names}
    write_summary(ROLES, *files, outputs)
    for name in names:
        assert outputs[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert pd.read_csv(outputs["summary"], sep="\t").shape == (8 * 12, len(SUMMARY_COLUMNS))


@pytest.mark.parametrize("figure", ["ablation", "data_scaling", "model_scaling"])
def test_a_figure_of_a_kind_the_plan_lacks_is_an_error(files, tmp_path, figure):
    roles = [r for r in ROLES if r["kind"] in ("full", "custom")]
    outputs = {
        "summary": tmp_path / "s.tsv",
        "runs": tmp_path / "r.tsv",
        figure: tmp_path / "f.png",
    }
    with pytest.raises(ExperimentError, match=r"has no \w+ run"):
        write_summary(roles, *files, outputs)


def test_bad_inputs_name_the_run_and_the_file(files, tmp_path):
    probes, cards = files
    bad = tmp_path / "bad.tsv"
    bad.write_text("target\tmean\nage\t1\n")
    with pytest.raises(ExperimentError, match=r"'full-s1'.*lacks columns"):
        summarize(ROLES, {**probes, "full-s1": bad}, cards)
    with pytest.raises(ExperimentError, match=r"'full-s1'.*cannot read its probe table"):
        summarize(ROLES, {**probes, "full-s1": tmp_path / "absent.tsv"}, cards)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ExperimentError, match=r"'data-10-s0'.*model card"):
        summarize(ROLES, probes, {**cards, "data-10-s0": broken})
    no_section = tmp_path / "empty.json"
    no_section.write_text("{}")
    with pytest.raises(ExperimentError, match=r"'data-10-s0'.*model card"):
        summarize(ROLES, probes, {**cards, "data-10-s0": no_section})
    with pytest.raises(ExperimentError, match=r"'solo-s2'.*no probe table"):
        summarize(ROLES, {k: v for k, v in probes.items() if k != "solo-s2"}, cards)


def test_a_run_whose_probe_scored_nothing_is_left_out(files, tmp_path):
    probes, cards = files
    empty = tmp_path / "empty.tsv"
    pd.DataFrame(columns=TSV_COLUMNS).to_csv(empty, sep="\t", index=False)
    summary, runs = summarize(ROLES, {**probes, "solo-s2": empty}, cards)
    assert "solo-s2" not in set(summary["run"]) and "solo-s2" in set(runs["run"])


def finetune_summary(path: Path, pretrained: float, scratch: float) -> Path:
    """A fine-tuning summary.tsv (damt.finetune) of one task and count."""
    rows = [
        ["age", init, 8, "mae", mean, mean - 1, mean + 1, 3, 10]
        for init, mean in (("pretrained", pretrained), ("scratch", scratch),
                           ("pretrained-scratch", pretrained - scratch))
    ]  # fmt: skip
    pd.DataFrame(rows, columns=FINETUNE_SUMMARY).to_csv(path, sep="\t", index=False)
    return path


def test_finetune_deltas_per_run_against_scratch_and_the_full_run(tmp_path):
    roles = [
        {"run": "full-s0", "kind": "full", "setting": "full", "seed": 0},
        {"run": "ablate-mim-s0", "kind": "ablation", "setting": "mim", "seed": 0},
    ]
    summaries = {
        "full-s0": finetune_summary(tmp_path / "a.tsv", 6.0, 9.0),
        "ablate-mim-s0": finetune_summary(tmp_path / "b.tsv", 7.5, 9.5),
    }
    deltas = finetune_deltas(roles, summaries).set_index("run")
    assert list(deltas.reset_index().columns) == FINETUNE_COLUMNS
    assert deltas.loc["full-s0", "pretrained_minus_scratch"] == pytest.approx(-3.0)
    assert deltas.loc["ablate-mim-s0", ["pretrained", "scratch"]].tolist() == [7.5, 9.5]
    assert deltas.loc["ablate-mim-s0", "delta_to_full"] == pytest.approx(1.5)
    assert deltas.loc["ablate-mim-s0", ["ci_low", "ci_high"]].tolist() == [-3.0, -1.0]
