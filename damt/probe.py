"""Linear probing: how much a frozen representation says about a phenotype.

Features are standardised inside each training fold, then ridge regression (continuous
targets) or L2 logistic regression (categorical targets) is fitted with nested cross-validation:
the regularisation strength is chosen from ``10^-2 .. 10^2`` by an inner 5-fold search on the
training part of every outer fold, and the outer folds score it (MAE and R², or balanced accuracy
and ROC AUC), reported as mean ± standard deviation over the outer folds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)
REGRESSION, CLASSIFICATION = "regression", "classification"
DEFAULT_GRID = tuple(np.logspace(-2, 2, 9))


class ProbeError(ValueError):
    """The probe cannot run on the data given (too few subjects, one class, ...)."""


@dataclass(frozen=True)
class Target:
    """A phenotype column to predict."""

    name: str
    kind: str  # regression | classification


def _folds(kind: str, y: np.ndarray, n_splits: int, seed: int):
    if kind == CLASSIFICATION:
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return KFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _n_splits(kind: str, y: np.ndarray, wanted: int, label: str) -> int:
    if kind == CLASSIFICATION:
        _, counts = np.unique(y, return_counts=True)
        if len(counts) < 2:
            raise ProbeError(f"{label}: only one class present; nothing to classify")
        n = min(wanted, int(counts.min()))
        if n < 2:
            raise ProbeError(
                f"{label}: the rarest class has {counts.min()} subject(s); at "
                "least 2 per class are needed for cross-validation"
            )
    else:
        n = min(wanted, len(y))
        if len(y) < 4:
            raise ProbeError(f"{label}: {len(y)} subjects; at least 4 are needed")
    if n < wanted:
        log.warning("%s: %d outer folds instead of %d (too few subjects)", label, n, wanted)
    return n


def nested_cv(
    x: np.ndarray,
    y: np.ndarray,
    kind: str,
    n_splits: int = 5,
    inner_splits: int = 5,
    grid: Sequence[float] = DEFAULT_GRID,
    seed: int = 0,
    label: str = "probe",
) -> dict:
    """Nested cross-validated linear probe; returns metrics per fold and their mean ± std."""
    if x.ndim != 2 or len(x) != len(y):
        raise ProbeError(f"{label}: features {x.shape} do not match {len(y)} targets")
    if x.shape[1] == 0:
        raise ProbeError(f"{label}: no feature columns")
    outer_n = _n_splits(kind, y, n_splits, label)
    if kind == REGRESSION:
        model = make_pipeline(StandardScaler(), Ridge())
        params = {"ridge__alpha": list(grid)}
        scoring = "neg_mean_absolute_error"
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        params = {"logisticregression__C": [1.0 / a for a in grid]}
        scoring = "balanced_accuracy"
    folds: dict[str, list[float]] = {}
    chosen = []
    for train, test in _folds(kind, y, outer_n, seed).split(x, y):
        inner_n = _n_splits(kind, y[train], inner_splits, f"{label} (inner)")
        search = GridSearchCV(
            model, params, scoring=scoring, cv=_folds(kind, y[train], inner_n, seed + 1)
        )
        search.fit(x[train], y[train])
        chosen.append(float(next(iter(search.best_params_.values()))))
        if kind == REGRESSION:
            pred = search.predict(x[test])
            scores = {"mae": mean_absolute_error(y[test], pred), "r2": r2_score(y[test], pred)}
        else:
            pred = search.predict(x[test])
            proba = search.predict_proba(x[test])
            scores = {"balanced_accuracy": balanced_accuracy_score(y[test], pred)}
            if len(np.unique(y[test])) > 1:
                classes = search.classes_
                scores["auc"] = (
                    roc_auc_score(y[test], proba[:, 1])
                    if len(classes) == 2
                    else roc_auc_score(y[test], proba, multi_class="ovr", labels=classes)
                )
        for k, v in scores.items():
            folds.setdefault(k, []).append(float(v))
    return {
        "kind": kind,
        "n_subjects": len(y),
        "n_features": int(x.shape[1]),
        "n_folds": outer_n,
        "metrics": {
            k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "folds": v}
            for k, v in folds.items()
        },
        "regularisation": {
            "grid": [float(g) for g in grid],
            "chosen_per_fold": chosen,
            "parameter": "alpha" if kind == REGRESSION else "C",
        },
    }


def align(
    features: pd.DataFrame,
    phenotypes: pd.DataFrame,
    target: Target,
    subjects: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Feature rows and target values of subjects that have both (and are in ``subjects``).

    Feature rows with any NaN are dropped (a probe has no imputation to hide behind).
    """
    if target.name not in phenotypes.columns:
        raise ProbeError(f"phenotype table has no column {target.name!r}")
    pheno = phenotypes[["subject_id", target.name]].dropna()
    merged = features.merge(pheno, on="subject_id", how="inner")
    if subjects is not None:
        merged = merged[merged["subject_id"].isin(set(subjects))]
    cols = [c for c in features.columns if c != "subject_id"]
    merged = merged[merged[cols].notna().all(axis=1)].sort_values("subject_id")
    y = merged[target.name].to_numpy()
    y = y.astype(np.float64) if target.kind == REGRESSION else y.astype(str)
    return merged[cols].to_numpy(np.float64), y, merged["subject_id"].tolist()


def probe_all(
    feature_sets: Mapping[str, pd.DataFrame],
    phenotypes: pd.DataFrame,
    targets: Sequence[Target],
    subjects: Sequence[str] | None = None,
    n_splits: int = 5,
    inner_splits: int = 5,
    seed: int = 0,
) -> dict:
    """Every (feature set, target) probe; a probe that cannot run records why."""
    out: dict[str, dict] = {}
    for target in targets:
        out[target.name] = {}
        for name, frame in feature_sets.items():
            label = f"{name} -> {target.name}"
            try:
                x, y, ids = align(frame, phenotypes, target, subjects)
                res = nested_cv(x, y, target.kind, n_splits, inner_splits, seed=seed, label=label)
                res["subjects"] = ids
            except ProbeError as exc:
                log.warning("%s", exc)
                res = {"kind": target.kind, "error": str(exc)}
            out[target.name][name] = res
    return out
