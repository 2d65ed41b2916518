"""Linear probe: nested CV finds real signal, reports chance for noise, refuses bad setups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from damt.probe import (
    CLASSIFICATION,
    REGRESSION,
    ProbeError,
    Target,
    align,
    nested_cv,
    probe_all,
)


def data(n=60, p=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    age = 50 + 10 * x[:, 0] - 5 * x[:, 1] + rng.normal(0, 2, n)
    sex = np.where(x[:, 2] + rng.normal(0, 0.3, n) > 0, "M", "F")
    ids = [f"s{i:03d}" for i in range(n)]
    feats = pd.DataFrame(x, columns=[f"f{j}" for j in range(p)])
    feats.insert(0, "subject_id", ids)
    pheno = pd.DataFrame({"subject_id": ids, "age": age, "sex": sex})
    return feats, pheno


def test_regression_signal_and_noise():
    feats, pheno = data()
    x, y, _ = align(feats, pheno, Target("age", REGRESSION))
    res = nested_cv(x, y, REGRESSION)
    assert res["metrics"]["r2"]["mean"] > 0.8
    assert res["metrics"]["mae"]["mean"] < 4.0
    assert res["metrics"]["mae_chance"]["mean"] > 3 * res["metrics"]["mae"]["mean"]
    assert len(res["metrics"]["mae"]["folds"]) == 5 and res["n_subjects"] == 60
    assert len(res["regularisation"]["chosen_per_fold"]) == 5
    noise = np.random.default_rng(1).normal(size=x.shape)
    assert nested_cv(noise, y, REGRESSION)["metrics"]["r2"]["mean"] < 0.15


def test_classification_signal():
    feats, pheno = data()
    x, y, _ = align(feats, pheno, Target("sex", CLASSIFICATION))
    res = nested_cv(x, y, CLASSIFICATION)
    assert res["metrics"]["balanced_accuracy"]["mean"] > 0.8
    assert res["metrics"]["auc"]["mean"] > 0.9
    assert res["regularisation"]["parameter"] == "C"


def test_align_keeps_partial_rows_drops_empty_ones_and_restricts():
    feats, pheno = data(n=10)
    feats.loc[0, "f3"] = np.nan  # partly missing: kept, imputed inside the CV
    feats.loc[2, [f"f{j}" for j in range(8)]] = np.nan  # no feature at all: dropped
    pheno.loc[1, "age"] = np.nan
    x, _, ids = align(feats, pheno, Target("age", REGRESSION), subjects=feats.subject_id[:8])
    assert ids == ["s000", *(f"s{i:03d}" for i in range(3, 8))] and x.shape == (6, 8)
    assert np.isnan(x[0, 3]) and np.isfinite(x[1:]).all()
    with pytest.raises(ProbeError, match="no column 'iq'"):
        align(feats, pheno, Target("iq", REGRESSION))


def test_missing_values_are_imputed_inside_the_folds():
    feats, pheno = data()
    rng = np.random.default_rng(2)
    holes = feats.copy()
    holes.iloc[:, 1:] = holes.iloc[:, 1:].mask(rng.random((60, 8)) < 0.1)
    holes["f7"] = np.nan  # a column no subject has
    x, y, ids = align(holes, pheno, Target("age", REGRESSION))
    assert len(ids) == 60 and x.shape[1] == 7  # nobody dropped for a partial row
    res = nested_cv(x, y, REGRESSION)
    assert res["metrics"]["r2"]["mean"] > 0.5 and res["n_subjects"] == 60


def test_bad_setups_are_explained():
    x = np.zeros((3, 2))
    with pytest.raises(ProbeError, match="at least 4"):
        nested_cv(x, np.arange(3.0), REGRESSION)
    with pytest.raises(ProbeError, match="only one class"):
        nested_cv(np.zeros((10, 2)), np.array(["F"] * 10), CLASSIFICATION)
    with pytest.raises(ProbeError, match="rarest class has 1"):
        nested_cv(np.zeros((10, 2)), np.array(["F"] * 9 + ["M"]), CLASSIFICATION)
    with pytest.raises(ProbeError, match="no feature columns"):
        nested_cv(np.zeros((10, 0)), np.arange(10.0), REGRESSION)


def test_probe_all_records_failures():
    feats, pheno = data(n=30)
    res = probe_all(
        {"good": feats, "empty": feats[["subject_id"]]}, pheno, [Target("age", REGRESSION)]
    )
    assert res["age"]["good"]["metrics"]["r2"]["mean"] > 0.5
    assert "no feature columns" in res["age"]["empty"]["error"]


@pytest.mark.slow
def test_morphometry_predicts_demo_age_above_chance(tmp_path):
    """The demo cohort's hidden age is recoverable from its morphometry (what `make demo`
    reports as the morphometry baseline): 16 subjects, the real parse → table → z-score path."""
    from damt.demo.cohort import generate_cohort
    from damt.features.morphometry import build_morphometry_tables
    from damt.features.normalize import fit_normalizer
    from damt.paths import ResultPaths
    from damt.stages.stats import StatsStage
    from tests.conftest import REPO, run_stage_shards

    cohort = tmp_path / "subjects"
    generate_cohort(cohort, 16, seed=0)  # the default config's demo cohort
    out = tmp_path / "results"
    summaries = run_stage_shards(StatsStage(), cohort, out, n_shards=1)
    paths = {g: out / f"morphometry_{g}.parquet" for g in ("global", "local")}
    tables = build_morphometry_tables(
        summaries,
        ResultPaths(str(out)).discovery_subjects(),
        REPO / "config" / "morphometry_catalog.yaml",
        paths,
    )
    z = [fit_normalizer(t).apply(t) for t in tables.values()]
    features = z[0].merge(z[1], on="subject_id")
    pheno = pd.read_csv(cohort / "phenotypes.tsv", sep="\t")
    res = probe_all({"morphometry": features}, pheno, [Target("age", REGRESSION)])
    metrics = res["age"]["morphometry"]["metrics"]
    assert res["age"]["morphometry"]["n_subjects"] == 16
    assert metrics["mae"]["mean"] < 0.6 * metrics["mae_chance"]["mean"]


def test_folds_split_by_participant():
    """Three sessions per person, a target that only identifies the person: folds that split
    sessions of one person leak it (high R²); participant-level folds do not."""
    rng = np.random.default_rng(0)
    n_people, n_sessions, p = 18, 3, 40
    person = np.repeat(np.arange(n_people), n_sessions)
    fingerprint = rng.normal(size=(n_people, p))
    x = fingerprint[person] + rng.normal(0, 0.05, (len(person), p))
    y = rng.normal(50, 10, n_people)[person]
    groups = np.array([f"P{i}" for i in person])
    leaky = nested_cv(x, y, REGRESSION, 3, 3, grid=(0.01,))
    grouped = nested_cv(x, y, REGRESSION, 3, 3, grid=(0.01,), groups=groups)
    assert leaky["metrics"]["r2"]["mean"] > 0.8
    assert grouped["metrics"]["r2"]["mean"] < 0.2

    sex = np.where(np.arange(n_people) % 2 == 0, "M", "F")[person]
    res = nested_cv(x, sex, CLASSIFICATION, 3, 3, grid=(1.0,), groups=groups)
    assert res["n_folds"] == 3

    from damt.probe import _folds

    for kind, target in ((REGRESSION, y), (CLASSIFICATION, sex)):
        for train, test in _folds(kind, target, 5, 0, grouped=True).split(x, target, groups):
            assert not set(groups[train]) & set(groups[test])

    ids = [f"s{i:03d}" for i in range(len(person))]
    feats = pd.DataFrame(x, columns=[f"f{j}" for j in range(p)]).assign(subject_id=ids)
    pheno = pd.DataFrame({"subject_id": ids, "age": y})
    participants = dict(zip(ids, groups, strict=True))
    out = probe_all({"f": feats}, pheno, [Target("age", REGRESSION)], None, 3, 3, 0, participants)
    assert out["age"]["f"]["metrics"]["r2"]["mean"] < 0.2
    with pytest.raises(ProbeError, match="one participant"):
        nested_cv(x[:6], y[:6], REGRESSION, groups=np.array(["P"] * 6))
