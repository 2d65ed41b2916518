"""Probes: held-out and nested-CV protocols, both probes, intervals, label efficiency, bad input,
and pooling that padding does not change."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from damt.config import validate_config
from damt.probe.estimators import alpha_grid, cv_split
from damt.probe.metrics import label_subset
from damt.probe.phenotypes import target_values
from damt.probe.settings import (
    CLASSIFICATION,
    NESTED_CV,
    REGRESSION,
    ProbeError,
    ProbeSettings,
    Target,
)
from damt.probe.targets import TSV_COLUMNS, probe_all, result_rows
from damt.split import assign_split

AGE, SEX = Target("age", REGRESSION), Target("sex", CLASSIFICATION)


def settings(**probe) -> ProbeSettings:
    """The schema's probe settings with ``probe`` changed."""
    return ProbeSettings.from_config(
        validate_config({"probe": probe}, sections=("probe",))["probe"]
    )


QUICK = settings(min_holdout=10, label_fractions=[0.25, 1.0], label_draws=2, bootstrap=200)
FULL_ONLY = settings(min_holdout=10, label_fractions=[1.0], bootstrap=200)


def data(n=80, p=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    age = 50 + 10 * x[:, 0] - 5 * x[:, 1] + rng.normal(0, 2, n)
    sex = np.where(x[:, 2] + rng.normal(0, 0.3, n) > 0, "M", "F")
    ids = [f"s{i:03d}" for i in range(n)]
    feats = pd.DataFrame(x, columns=[f"f{j}" for j in range(p)])
    feats.insert(0, "subject_id", ids)
    pheno = pd.DataFrame({"subject_id": ids, "age": age, "sex": sex})
    split = assign_split(pheno[["subject_id"]], 0.25)
    split.index = ids
    return feats, pheno, split


def noise_like(feats, seed):
    out = feats.copy()
    out.iloc[:, 1:] = np.random.default_rng(seed).normal(size=(len(out), out.shape[1] - 1))
    return out


def test_held_out_scores_both_probes_with_intervals():
    feats, pheno, split = data()
    sets = {"good": [feats], "noise": [noise_like(feats, s) for s in (1, 2, 3)]}
    res = probe_all(sets, pheno, [AGE, SEX], split, QUICK)
    table = result_rows(res)
    assert list(table.columns) == TSV_COLUMNS
    assert set(table["method"]) == {"linear", "knn"} and set(table["protocol"]) == {"holdout"}
    held = list(split.index[split == "holdout"])
    assert res["age"]["test_subjects"] == held and (table["n_test"] == len(held)).all()
    assert not set(held) & set(res["age"]["train_subjects"])
    full = table[table["label_fraction"] == 1.0].set_index(
        ["target", "features", "method", "metric"]
    )
    assert full.loc[("age", "good", "linear", "r2"), "mean"] > 0.8
    assert full.loc[("age", "good", "knn", "r2"), "mean"] > 0.3
    assert full.loc[("sex", "good", "linear", "auc"), "mean"] > 0.85
    assert full.loc[("age", "noise", "linear", "r2"), "ci_low"] < 0.1
    assert (table["ci_low"] <= table["mean"]).all() and (table["mean"] <= table["ci_high"]).all()
    # The noise set's row averages its three replicates; each one's value is in probe.json.
    noise = next(
        r for r in res["age"]["results"]
        if (r["features"], r["method"], r["label_fraction"]) == ("noise", "linear", 1.0)
    )  # fmt: skip
    assert noise["replicates"] == 3 and len(noise["metrics"]["r2"]["per_fit"]) == 3
    assert noise["metrics"]["r2"]["mean"] == pytest.approx(
        np.mean(noise["metrics"]["r2"]["per_fit"])
    )
    # Label efficiency: fewer training subjects at 25 %, same test subjects.
    quarter = table[(table["label_fraction"] == 0.25) & (table["target"] == "age")]
    assert len(quarter) == 8  # good and noise, linear and k-NN, MAE and R²
    assert (quarter["n_train"] == np.ceil(0.25 * len(res["age"]["train_subjects"]))).all()


def test_intervals_and_subsets_are_reproducible_from_the_seed():
    feats, pheno, split = data(n=60)
    run = lambda seed: result_rows(  # noqa: E731
        probe_all(
            {"good": [feats]},
            pheno,
            [AGE],
            split,
            ProbeSettings(**{**QUICK.__dict__, "seed": seed}),
        )
    )
    first, again, other = run(0), run(0), run(1)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["ci_low"], other["ci_low"])
    a, b = label_subset(40, 0.25, 0, 7), label_subset(40, 0.5, 0, 7)
    assert len(a) == 10 and len(b) == 20 and set(a) <= set(b)  # nested
    np.testing.assert_array_equal(a, label_subset(40, 0.25, 0, 7))
    assert set(label_subset(40, 0.25, 1, 7)) != set(a)  # another draw
    labels = np.array(["M"] * 33 + ["F"] * 7)
    small = label_subset(40, 0.1, 0, 7, labels)
    assert sorted(labels[small]) == ["F", "M", "M", "M", "M"]  # every class kept
    assert set(small) <= set(label_subset(40, 0.5, 0, 7, labels))


def test_too_few_held_out_subjects_fall_back_to_nested_cv(caplog):
    feats, pheno, split = data(n=40)
    with caplog.at_level(logging.WARNING, logger="damt.probe"):
        res = probe_all(
            {"good": [feats]},
            pheno,
            [AGE],
            split,
            settings(min_holdout=30, bootstrap=200, label_fractions=[1.0]),
        )
    table = result_rows(res)
    assert set(table["protocol"]) == {NESTED_CV} and (table["n_test"] == 40).all()
    assert "age:" in caplog.text and "fewer than probe.min_holdout 30" in caplog.text
    assert split.index[split == "holdout"][0] in caplog.text  # names the held-out subjects
    assert table.set_index(["method", "metric"]).loc[("linear", "r2"), "mean"] > 0.7
    assert res["age"]["protocol"] == NESTED_CV


def test_the_grid_scales_with_features_and_edges_are_flagged(caplog):
    assert alpha_grid(768)[0] == pytest.approx(768 * alpha_grid(1)[0])
    assert alpha_grid(10)[-1] / alpha_grid(10)[0] >= 1e6
    feats, pheno, split = data()
    with caplog.at_level(logging.WARNING, logger="damt.probe"):
        res = probe_all({"noise": [noise_like(feats, 5)]}, pheno, [AGE], split, QUICK)
    linear = next(h for h in res["age"]["hyperparameters"] if h["method"] == "linear")
    grid = alpha_grid(8)
    at_edge = sum(np.isclose(c, grid[0]) or np.isclose(c, grid[-1]) for c in linear["chosen"])
    # Noise features: the penalty runs to the largest value of the grid, which is flagged.
    assert at_edge > 0 and linear["fits_at_edge"] == at_edge and linear["at_edge"]
    assert "sat at an edge of its grid" in caplog.text


# --- bad phenotype input: a clear message naming target and subjects; other targets still run ---


def test_missing_and_duplicated_ids_are_left_out_by_name(caplog):
    _, pheno, split = data(n=60)
    pheno = pd.concat([pheno.drop(index=[3, 4]), pheno.iloc[[7]].assign(age=1.0)])
    with caplog.at_level(logging.WARNING, logger="damt.probe"):
        values = target_values(pheno, AGE, list(split.index))
    assert "s003" in caplog.text and "s004" in caplog.text and "no value" in caplog.text
    assert "more than once" in caplog.text and "s007" in caplog.text and "age:" in caplog.text
    assert not {"s003", "s004", "s007"} & set(values.index) and len(values) == 57


def test_non_numeric_regression_values_and_one_class_name_the_target():
    feats, pheno, split = data(n=60)
    bad = pheno.astype({"age": object})
    bad.loc[5, "age"] = "old"
    pheno_one = pheno.assign(sex="F")
    with pytest.raises(
        ProbeError, match=r"age: a regression target, but non-numeric.*s005 \('old'\)"
    ):
        target_values(bad, AGE, list(split.index))
    with pytest.raises(ProbeError, match="sex: only one class"):
        target_values(pheno_one, SEX, list(split.index))
    # One bad target does not stop the others.
    res = probe_all({"good": [feats]}, bad.assign(sex=pheno["sex"]), [AGE, SEX], split, FULL_ONLY)
    assert "non-numeric" in res["age"]["error"] and res["sex"]["results"]
    assert set(result_rows(res)["target"]) == {"sex"}


def test_one_held_out_class_falls_back_and_names_the_subjects(caplog):
    feats, pheno, split = data(n=60)
    held = split.index[split == "holdout"]
    pheno.loc[pheno["subject_id"].isin(held), "sex"] = "F"
    with caplog.at_level(logging.WARNING, logger="damt.probe"):
        res = probe_all({"good": [feats]}, pheno, [SEX], split, FULL_ONLY)
    assert res["sex"]["protocol"] == NESTED_CV
    assert "one class only" in caplog.text and held[0] in caplog.text


def test_a_missing_column_and_too_few_subjects_are_errors_per_target():
    feats, pheno, split = data(n=60)
    small = split.iloc[:3]
    res = probe_all({"good": [feats]}, pheno, [Target("iq", REGRESSION), AGE], small, QUICK)
    assert "no column 'iq'" in res["iq"]["error"]
    assert "at least 4" in res["age"]["error"]


def test_a_random_init_seed_equal_to_the_pretraining_seed_is_refused(tmp_path):
    import json

    from damt.probe.job import run_probe

    card = tmp_path / "model_card.json"
    card.write_text(json.dumps({"pretraining": {"config": {"seed": 1002}}}))
    probe = {"threads": 1, "random_init_seeds": [1001, 1002, 1003], "min_holdout": 20,
             "folds": 5, "inner_folds": 5, "label_fractions": [1.0], "label_draws": 1,
             "bootstrap": 100, "seed": 0}  # fmt: skip
    with pytest.raises(ProbeError, match="pretraining seed 1002"):
        run_probe(probe, tmp_path / "m.parquet", tmp_path / "e.safetensors", card, [], {})


# --- pooling ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pooled_features_do_not_depend_on_padding():
    """The same brain padded by different amounts (before and after, as the cache's pad to a
    multiple of 32 does) gives the same features, exactly up to float error (atol 1e-5), once
    centred on one grid; pooled where it lies in each padded volume, it does not."""
    import torch

    from damt.model import EncoderSpec, build_encoder, encoder_stride, pooled_features
    from damt.probe.features import foreground_features, probe_grid

    torch.manual_seed(0)
    encoder = build_encoder(
        EncoderSpec(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window=4)
    ).eval()
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:22, :26, :20]
    inside = ((zz - 11) / 10) ** 2 + ((yy - 13) / 12) ** 2 + ((xx - 10) / 9) ** 2 < 1
    brain = inside * rng.uniform(0.2, 1.0, inside.shape).astype(np.float32)
    padded = [
        np.pad(brain, [(0, 10), (0, 6), (0, 12)]),
        np.pad(brain, [(3, 39), (0, 38), (10, 2)]),
        np.pad(brain, [(0, 0), (12, 0), (0, 44)]),
    ]
    stride = encoder_stride(encoder)
    grid = probe_grid([brain.shape], stride)
    feats = [foreground_features(encoder, v, grid) for v in padded]
    for f in feats[1:]:
        torch.testing.assert_close(f, feats[0], atol=1e-5, rtol=0)
    plain = [pooled_features(encoder, torch.from_numpy(v))[0] for v in padded]
    assert not torch.allclose(plain[0], plain[1], atol=1e-3)


def test_cross_validation_splits_by_participant():
    """Three sessions per person and a target that only identifies the person: folds that put
    sessions of one person on both sides leak it (high R²); folds by participant do not, in the
    outer nested CV and in the inner penalty search alike."""
    rng = np.random.default_rng(0)
    n_people, n_sessions, p = 18, 3, 40
    person = np.repeat(np.arange(n_people), n_sessions)
    x = rng.normal(size=(n_people, p))[person] + rng.normal(0, 0.05, (len(person), p))
    age = rng.normal(50, 10, n_people)[person]
    ids = [f"s{i:03d}" for i in range(len(person))]
    feats = pd.DataFrame(x, columns=[f"f{j}" for j in range(p)]).assign(subject_id=ids)
    pheno = pd.DataFrame({"subject_id": ids, "age": age})
    split = pd.Series("train", index=ids)  # no held-out subjects: nested CV over all
    participants = {s: f"P{k}" for s, k in zip(ids, person, strict=True)}

    def r2(groups):
        res = probe_all({"f": [feats]}, pheno, [AGE], split, FULL_ONLY, groups)["age"]
        assert res["protocol"] == NESTED_CV
        row = next(r for r in res["results"] if r["method"] == "linear")
        return row["metrics"]["r2"]["mean"]

    assert r2(None) > 0.8
    assert r2(participants) < 0.2
    groups = np.array([participants[s] for s in ids])
    sex = np.where(person % 2 == 0, "M", "F")
    for kind, y in ((REGRESSION, age), (CLASSIFICATION, sex)):
        for train, test in cv_split(kind, 5, 0, y, groups, "t"):
            assert not set(groups[train]) & set(groups[test])
    with pytest.raises(ProbeError, match="one participant"):
        cv_split(REGRESSION, 5, 0, age[:6], np.array(["P"] * 6), "t")
