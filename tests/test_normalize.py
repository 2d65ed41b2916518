"""Normalisation: z-score and robust fits, dropped columns with reasons, NaN kept, reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from damt.features.normalize import (
    NormalizationError,
    Normalizer,
    fit_normalizer,
    normalize_table,
)
from damt.features.tables import cohort_frame, read_table, write_table


def frame(values: dict[str, list[float]], ids=None) -> pd.DataFrame:
    n = len(next(iter(values.values())))
    ids = ids or [f"s{i}" for i in range(n)]
    rows = {sid: {k: v[i] for k, v in values.items()} for i, sid in enumerate(ids)}
    return cohort_frame(ids, rows, list(values))


def test_zscore_on_fit_subjects_applied_to_all():
    df = frame({"a": [1.0, 2.0, 3.0, 100.0], "b": [10.0, np.nan, 30.0, 20.0]})
    norm = fit_normalizer(df, ["s0", "s1", "s2"])
    assert norm.center == {"a": 2.0, "b": 20.0}
    assert norm.scale["a"] == pytest.approx(1.0) and norm.n_fit == 3
    z = norm.apply(df)
    assert z["a"].tolist() == pytest.approx([-1.0, 0.0, 1.0, 98.0])
    assert np.isnan(z["b"][1])  # missing stays missing
    assert z["a"].dtype == np.float32 and list(z.subject_id) == ["s0", "s1", "s2", "s3"]


def test_infinite_values_count_as_missing_when_fitting_and_applying():
    df = frame({"a": [1.0, 2.0, 3.0, np.inf, -np.inf]})
    norm = fit_normalizer(df, ["s0", "s1", "s2", "s3"])
    assert norm.columns == ["a"] and norm.center == {"a": 2.0}
    assert norm.scale["a"] == pytest.approx(1.0)
    z = norm.apply(df)["a"].to_numpy()
    assert z[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0]) and np.isnan(z[3:]).all()


def test_dropped_columns_are_listed_with_reasons():
    df = frame(
        {
            "ok": [1.0, 2.0, 3.0, 4.0],
            "const": [5.0, 5.0, 5.0, 5.0],
            "tiny": [1e6, 1e6 + 1e-6, 1e6, 1e6],
            "nan": [np.nan] * 4,
            "one": [np.nan, np.nan, 7.0, np.nan],
        }
    )
    norm = fit_normalizer(df)
    assert norm.columns == ["ok"]
    assert norm.dropped == {
        "const": "constant",
        "tiny": "constant",
        "nan": "all_nan",
        "one": "too_few_values",
    }
    assert list(norm.apply(df).columns) == ["subject_id", "ok"]


def test_near_constant_column():
    values = [0.0] * 39 + [1.0]
    norm = fit_normalizer(frame({"x": values, "y": list(range(40))}))
    assert norm.dropped == {"x": "near_constant"}
    norm = fit_normalizer(frame({"x": values, "y": list(range(40))}), max_mode_fraction=1.0)
    assert "x" in norm.center


def test_robust_and_clipping():
    data = [1.0, 2.0, 3.0, 4.0, 5.0, 1000.0]
    norm = fit_normalizer(frame({"a": data}), method="robust", clip=3.0)
    assert norm.center["a"] == 3.5
    assert norm.scale["a"] == pytest.approx(
        (np.percentile(data, 75) - np.percentile(data, 25)) / 1.349
    )
    z = norm.apply(frame({"a": data}))
    assert z["a"].max() == 3.0 and z["a"].min() >= -3.0


def test_cohort_of_one_is_a_clear_error():
    with pytest.raises(NormalizationError, match="1 subject\\(s\\) pass QC, at least 2"):
        fit_normalizer(frame({"a": [1.0]}), group="radiomics")
    with pytest.raises(NormalizationError, match="0 subject"):
        fit_normalizer(frame({"a": [1.0, 2.0]}), fit_ids=[])
    with pytest.raises(ValueError, match="unknown normalisation method"):
        fit_normalizer(frame({"a": [1.0, 2.0]}), method="minmax")


def test_saved_statistics_apply_to_another_site(tmp_path: Path):
    site_a = frame({"a": [1.0, 2.0, 3.0], "b": [0.0, 2.0, 4.0]})
    norm = fit_normalizer(site_a, group="g")
    norm.to_json(tmp_path / "n.json")
    back = Normalizer.from_json(tmp_path / "n.json")
    assert back == norm
    site_b = frame({"b": [2.0, 6.0], "c": [1.0, 1.0]}, ids=["x1", "x2"])
    z = back.apply(site_b)
    assert list(z.columns) == ["subject_id", "a", "b"]
    assert z["a"].isna().all() and z["b"].tolist() == [0.0, 2.0]


def test_normalize_table_writes_table_and_statistics(tmp_path: Path):
    df = frame({"a": [1.0, 2.0, 3.0], "c": [1.0, 1.0, 1.0]})
    write_table(df, tmp_path / "t.parquet", {"group": "g", "units": {"a": "mm"}})
    normalize_table(
        tmp_path / "t.parquet",
        ["s0", "s1", "s2"],
        tmp_path / "t.z.parquet",
        tmp_path / "t.norm.json",
        group="g",
    )
    z, meta = read_table(tmp_path / "t.z.parquet")
    assert list(z.columns) == ["subject_id", "a"]
    assert meta["units"] == {"a": "mm"}
    assert meta["normalization"]["dropped"] == {"c": "constant"}
    assert Normalizer.from_json(tmp_path / "t.norm.json").n_fit == 3
