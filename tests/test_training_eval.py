"""The held-out evaluation during pretraining (pretrain.eval_every): the k-NN probe and the
pretext tasks' learning signals on held-out views."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from damt.cli import main as damt_main
from damt.model import TASKS
from damt.model.network import DAMTNetwork
from damt.split import unit_hash
from damt.training.checkpoint import BEST
from damt.training.data import load_training_data
from damt.training.distributed import DistEnv
from damt.training.evaluate import build_eval_set, knn_scores
from damt.training.heldout import held_out_loader, held_out_signals
from damt.training.inputs import TrainInputs
from damt.training.objective import PretrainObjective
from damt.training.run import network_spec
from damt.training.signals import SIGNALS
from tests.training_data import METHODS, run_settings, train_args, write_config, write_training_set

HELD = ["sub-03", "sub-06"]
TARGETS = [{"name": "age", "type": "regression"}, {"name": "sex", "type": "classification"}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Ten training-set subjects, two of them held out, with phenotypes."""
    files = write_training_set(tmp_path_factory.mktemp("eval"), n_subjects=10)
    manifest = pd.read_parquet(files.manifest)
    manifest["split"] = np.where(manifest["subject_id"].isin(HELD), "holdout", "train")
    manifest.to_parquet(files.manifest)
    ids = manifest["subject_id"].tolist()
    rng = np.random.default_rng(0)
    pheno = pd.DataFrame(
        {
            "subject_id": ids,
            "age": rng.normal(50, 10, len(ids)),
            "sex": ["F", "M"] * (len(ids) // 2),
        }
    )
    pheno.to_csv(files.root / "phenotypes.tsv", sep="\t", index=False)
    return files


def test_eval_set_holds_the_held_out_subjects_and_a_capped_stable_reference(files, caplog):
    phenotypes = files.root / "phenotypes.tsv"
    full = build_eval_set(files.manifest, phenotypes, TARGETS, cap=100, stride=32)
    assert full.subjects[: full.n_holdout] == HELD
    reference = full.subjects[full.n_holdout :]
    # The reference set is training subjects only (pass/warn with a cache, not held out).
    assert set(reference) == set(load_training_data(files.manifest, files.label_table, {}).subjects)
    capped = build_eval_set(files.manifest, phenotypes, TARGETS, cap=5, stride=32)
    assert len(capped.subjects) == 2 + 5 and set(capped.subjects[2:]) <= set(reference)
    # Stable: the first five by the ids' hash, the same in every process and on every rerun.
    assert capped.subjects[2:] == sorted(sorted(reference, key=unit_hash)[:5])
    assert set(full.targets) == {"age", "sex"}
    assert all(g % 32 == 0 for g in full.grid)
    # Nothing to score: off, and the log says why.
    with caplog.at_level(logging.INFO, logger="damt.train"):
        assert build_eval_set(files.manifest, None, TARGETS, 100, 32) is None
        no_split = files.root / "nosplit.parquet"
        pd.read_parquet(files.manifest).drop(columns="split").to_parquet(no_split)
        assert build_eval_set(no_split, phenotypes, TARGETS, 100, 32) is None
        assert build_eval_set(files.manifest, files.root / "absent.tsv", TARGETS, 100, 32) is None
        (files.root / "noid.tsv").write_text("participant\tage\nx\t3\n")
        assert build_eval_set(files.manifest, files.root / "noid.tsv", TARGETS, 100, 32) is None
    assert "no phenotype table" in caplog.text and "no held-out subject" in caplog.text
    assert "cannot read" in caplog.text and "absent.tsv" in caplog.text


def test_knn_scores_find_a_target_the_features_encode(files):
    eval_set = build_eval_set(files.manifest, files.root / "phenotypes.tsv", TARGETS, 100, 32)
    _, ages = eval_set.targets["age"]
    rng = np.random.default_rng(1)
    # Features that encode age (on a ring: cosine similarity orders by age), or sex, or nothing.
    angle = ages.to_numpy() / 100 * np.pi
    sex = (eval_set.targets["sex"][1].to_numpy() == "M").astype(float)
    noise = rng.normal(size=(len(angle), 4))
    by_age = knn_scores(np.c_[np.cos(angle), np.sin(angle)], eval_set, 0)
    by_sex = knn_scores(np.c_[sex, 1 - sex] + 0.01 * noise[:, :2], eval_set, 0)
    blind = knn_scores(noise, eval_set, 0)
    assert by_age["eval/age/mae"] < blind["eval/age/mae"]
    assert by_sex["eval/sex/balanced_accuracy"] == 1.0
    good = by_age
    assert {"eval/age/r2", "eval/age/k", "eval/sex/auc", "eval/sex/k"} <= set(good)


@pytest.mark.slow
def test_training_logs_the_evaluation_and_keeps_the_best_checkpoint(files, tmp_path):
    config = write_config(tmp_path / "c.yaml", epochs=3, eval_every=2, keep_best=True)
    data = yaml.safe_load(config.read_text())
    data["probe"] = {"phenotypes": str(files.root / "phenotypes.tsv"), "targets": TARGETS}
    config.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    assert damt_main(train_args(files, config, run)) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Evaluated after epoch 2 (eval_every) and after the last one, not after epoch 1.
    assert ["eval/age/r2" in r for r in records] == [False, True, True]
    # The learning signals on the held-out views too: every task's, with its chance level.
    for record, due in zip(records, (False, True, True), strict=True):
        for name in SIGNALS.values():
            assert (f"eval_signal/{name}" in record) == due, (record["epoch"], name)
        if due:
            assert _defined(record) == DEFINED_ON_HELD_OUT
    assert all(r["eval/seconds"] > 0 for r in records[1:])
    card = json.loads((run / "model_card.json").read_text())
    best = card["pretraining"]["best_checkpoint"]
    assert best["file"] == f"checkpoints/{BEST}" and best["metric"] == "eval/age/r2"
    scores = {r["epoch"] + 1: r["eval/age/r2"] for r in records[1:]}
    assert best["epoch"] == max(scores, key=scores.get)
    assert best["score"] == pytest.approx(max(scores.values()))
    kept = torch.load(run / "checkpoints" / BEST, weights_only=True)
    assert kept["epoch"] == best["epoch"]


# sub-03 has no radiomics row (write_training_set leaves some out): an R² over one held-out
# subject is undefined (None), every other held-out signal has a value.
DEFINED_ON_HELD_OUT = {name for name in SIGNALS.values() if name != "radiomics_r2"}


def _defined(record: dict) -> set[str]:
    """The held-out signals with a finite value and chance level."""
    return {
        name
        for name in SIGNALS.values()
        if all(
            record.get(f"eval_{kind}/{name}") is not None
            and np.isfinite(record[f"eval_{kind}/{name}"])
            for kind in ("signal", "chance")
        )
    }


def _inputs(files) -> TrainInputs:
    return TrainInputs.from_arguments(files.manifest, files.label_table, files.tables_dir, {})


def test_held_out_views_are_the_held_out_subjects_only_and_the_same_every_time(files):
    settings = run_settings(eval_every=1, batch_size_per_gpu=1)
    alone = DistEnv(0, 1, 0, 1, torch.device("cpu"))
    loader = held_out_loader(_inputs(files), settings, alone)
    assert loader.dataset.data.subjects == HELD
    first, second = list(loader), list(loader)
    assert len(first) == len(HELD)
    for a, b in zip(first, second, strict=True):
        for key in a:  # (a missing radiomics row is NaN)
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)
    # Capped by pretrain.eval_subjects (a stable sample of the held-out subjects).
    capped = held_out_loader(_inputs(files), run_settings(eval_subjects=1), alone)
    assert len(capped.dataset.data.subjects) == 1
    assert capped.dataset.data.subjects[0] in HELD


def test_a_manifest_that_holds_nobody_out_has_no_held_out_views(tmp_path, caplog):
    files = write_training_set(tmp_path, n_subjects=3)  # no split column: nobody held out
    alone = DistEnv(0, 1, 0, 1, torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="damt"):
        assert held_out_loader(_inputs(files), run_settings(eval_every=1), alone) is None
    assert "the manifest holds no held-out subject" in caplog.text


@pytest.mark.parametrize("method", ["ntxent_queue_ema", "dino"])
def test_held_out_signals_score_the_views_and_leave_the_run_state_alone(files, method):
    """Eval mode: no drop path, and the contrastive queue and DINO's centre stay as they are;
    the network's weights and its training mode too."""
    settings = run_settings(eval_every=1, batch_size_per_gpu=2, **METHODS[method])
    alone = DistEnv(0, 1, 0, 1, torch.device("cpu"))
    loader = held_out_loader(_inputs(files), settings, alone)
    data = _inputs(files).load(settings.tasks)
    torch.manual_seed(0)
    objective = PretrainObjective(
        DAMTNetwork(network_spec(settings, data)), settings.balancing,
        settings.contrastive_temperature, settings.contrastive, settings.ema,
    )  # fmt: skip
    objective.train()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    first = held_out_signals(objective, loader, alone, "fp32")
    assert objective.training
    for key, value in objective.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert set(first) == {
        f"eval_{kind}/{SIGNALS[t]}" for t in TASKS for kind in ("signal", "chance")
    }
    assert _defined(first) == DEFINED_ON_HELD_OUT, first
    # Rotation: 2 views per subject scored against 10 classes; atlas Dice and R² in range.
    assert first["eval_chance/rotation_accuracy"] == pytest.approx(0.1)
    assert 0 <= first["eval_signal/atlas_dice"] <= 1
    assert held_out_signals(objective, loader, alone, "fp32") == first
