"""Scores of a fit on its test subjects, bootstrap intervals, and nested label subsets."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from damt.probe.estimators import Fit
from damt.probe.settings import METRICS, REGRESSION

# The bootstrap interval: the central 95 % of the resampled scores.
INTERVAL_PERCENTILES = (2.5, 97.5)


def _auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC per row (Mann-Whitney with average ranks); NaN where a row lacks a class."""
    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def scores(
    kind: str, y: np.ndarray, fit: Fit, classes: np.ndarray | None, idx: np.ndarray
) -> dict[str, np.ndarray]:
    """Metrics of ``fit`` on the subject resamples ``idx`` (one resample per row): MAE and R²,
    or balanced accuracy and ROC AUC (one-vs-rest macro average beyond two classes); NaN where a
    resample cannot define the metric (one class, constant target)."""
    yt, pt = y[idx], fit.pred[idx]
    if kind == REGRESSION:
        ss_tot = ((yt - yt.mean(1, keepdims=True)) ** 2).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r2 = np.where(ss_tot > 0, 1 - ((yt - pt) ** 2).sum(1) / ss_tot, np.nan)
        return {"mae": np.abs(yt - pt).mean(1), "r2": r2}
    recalls = []
    for c in classes:
        n_c = (yt == c).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(n_c > 0, ((yt == c) & (pt == c)).sum(1) / n_c, np.nan))
    proba = fit.proba[idx]
    if len(classes) == 2:
        auc = _auc(proba[..., 1], yt == classes[1])
    else:
        auc = np.mean([_auc(proba[..., j], yt == c) for j, c in enumerate(classes)], axis=0)
    return {"balanced_accuracy": np.nanmean(np.stack(recalls), axis=0), "auc": auc}


def summarise(
    kind: str, y: np.ndarray, fits: Sequence[Fit], classes, n_boot: int, seed: int
) -> dict[str, dict]:
    """Per metric: the mean over ``fits`` (all predicting the same subjects ``y``), a percentile
    bootstrap 95 % interval of that mean over subjects (resamples seeded by ``seed``), and each
    fit's value."""
    whole = np.arange(len(y))[None]
    boot_idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    per_fit = [scores(kind, y, f, classes, whole) for f in fits]
    boots = [scores(kind, y, f, classes, boot_idx) for f in fits]
    out = {}
    for m in METRICS[kind]:
        values = [float(v[m][0]) for v in per_fit]
        boot = np.mean([b[m] for b in boots], axis=0)
        finite = boot[np.isfinite(boot)]
        lo, hi = np.percentile(finite, INTERVAL_PERCENTILES) if len(finite) else (np.nan, np.nan)
        out[m] = {
            "mean": _finite(np.mean(values)),
            "ci_low": _finite(lo),
            "ci_high": _finite(hi),
            "per_fit": [_finite(v) for v in values],
            "std_over_fits": _finite(np.std(values)),
        }
    return out


def _finite(value: float) -> float | None:
    """``value``, or None where undefined (probe.json stays valid JSON)."""
    return float(value) if np.isfinite(value) else None


def label_subset(
    n: int, fraction: float, draw: int, seed: int, classes: np.ndarray | None = None
) -> np.ndarray:
    """Indices of ``fraction`` of ``n`` training subjects (at least 1): the first ones of a
    permutation seeded by ``(seed, draw)``, so a draw's smaller subsets nest in its larger ones.
    With ``classes`` (the subjects' labels) the share is taken within each class, so a small
    subset keeps every class."""
    if classes is None:
        order = np.random.default_rng([seed, draw]).permutation(n)
        return np.sort(order[: max(1, math.ceil(fraction * n))])
    picked = []
    for i, c in enumerate(np.unique(classes)):
        members = np.flatnonzero(classes == c)
        order = np.random.default_rng([seed, draw, i]).permutation(members)
        picked.append(order[: max(1, math.ceil(fraction * len(members)))])
    return np.sort(np.concatenate(picked))
