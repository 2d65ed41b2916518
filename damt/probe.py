"""Probing: how much a frozen representation says about a phenotype (docs/contracts.md, "Probe").

Protocol. Every feature set is scored on the same subjects of a target. The probes are fitted on
the pretraining subjects (manifest ``split == train``) and scored on the held-out subjects, which
pretraining never saw (protocol ``holdout``); a target with fewer than ``probe.min_holdout``
held-out subjects (or one class among them) falls back to nested cross-validation over all
probed subjects (protocol ``nested_cv``: out-of-fold predictions). Two probes: ``linear`` (ridge
regression / L2 logistic regression, the penalty chosen by an inner search on the training
subjects over a grid scaled to the feature count) and ``knn`` (k nearest neighbours on cosine
similarity, k chosen by the same inner search). Missing feature values are imputed with the
training subjects' median and features standardised, both fitted on the training subjects only.

Scores (MAE and R², or balanced accuracy and ROC AUC) are computed on the test subjects' pooled
predictions, with a percentile bootstrap 95 % interval over test subjects. A row that averages
several fits (random-init seeds, label-fraction draws) averages the metric over them inside each
bootstrap resample. Label efficiency refits on nested random subsets of the training subjects.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from damt.manifest import HOLDOUT, KEY, TRAIN

log = logging.getLogger(__name__)
REGRESSION, CLASSIFICATION = "regression", "classification"
LINEAR, KNN = "linear", "knn"
METHODS = (LINEAR, KNN)
HOLDOUT_PROTOCOL, NESTED_CV = "holdout", "nested_cv"
METRICS = {REGRESSION: ("mae", "r2"), CLASSIFICATION: ("balanced_accuracy", "auc")}
KNN_K = (1, 3, 5, 7, 10, 15, 20, 30, 50)
# Ridge penalties per feature (logistic C is 1/alpha): alpha_grid scales them by the count.
PENALTIES_PER_FEATURE = np.logspace(-3, 3, 13)
# The bootstrap interval: the central 95 % of the resampled scores.
INTERVAL_PERCENTILES = (2.5, 97.5)
TSV_COLUMNS = [
    "target",
    "features",
    "method",
    "label_fraction",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
    "n_train",
    "n_test",
    "protocol",
]


class ProbeError(ValueError):
    """The probe cannot run on the data given (too few subjects, one class, ...)."""


@dataclass(frozen=True)
class Target:
    """A phenotype column to predict."""

    name: str
    kind: str  # regression | classification


@dataclass(frozen=True)
class ProbeSettings:
    """The probe's protocol settings (the config's ``probe`` section)."""

    min_holdout: int = 20
    folds: int = 5
    inner_folds: int = 5
    label_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    label_draws: int = 3
    bootstrap: int = 1000
    seed: int = 0

    @classmethod
    def from_config(cls, probe: Mapping) -> ProbeSettings:
        """From the config's ``probe`` section."""
        return cls(
            probe["min_holdout"],
            probe["folds"],
            probe["inner_folds"],
            tuple(sorted(float(f) for f in probe["label_fractions"])),
            probe["label_draws"],
            probe["bootstrap"],
            probe["seed"],
        )


def _names(ids: Sequence[str], limit: int = 10) -> str:
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(map(str, ids[:limit])) + more


# --- the phenotype table --------------------------------------------------------------------


def read_phenotypes(path: str | Path) -> pd.DataFrame:
    """A phenotype table (TSV or CSV) with a ``subject_id`` column; rows without an id are
    dropped with a warning. Values stay as read (each target checks its own column)."""
    sep = "," if str(path).endswith(".csv") else "\t"
    frame = pd.read_csv(path, sep=sep, dtype={KEY: str})
    if KEY not in frame.columns:
        raise ProbeError(f"phenotype table {path} has no '{KEY}' column")
    no_id = frame[KEY].isna() | (frame[KEY].str.strip() == "")
    if no_id.any():
        log.warning(
            "phenotype table %s: %d row(s) without a subject_id (lines %s) are ignored",
            path,
            int(no_id.sum()),
            _names([i + 2 for i in np.flatnonzero(no_id)]),
        )
    frame = frame[~no_id].copy()
    frame[KEY] = frame[KEY].str.strip()
    return frame


def target_values(phenotypes: pd.DataFrame, target: Target, subjects: Sequence[str]) -> pd.Series:
    """The target's value per probed subject (index: subject id), checked.

    Subjects listed more than once are left out (which row is right is unknowable), subjects
    without a row or value are left out, each with a warning naming them; a regression value
    that is not a number, or a classification target with one class, is a :class:`ProbeError`
    naming the target (and the subjects).
    """
    name = target.name
    if name not in phenotypes.columns:
        raise ProbeError(f"{name}: the phenotype table has no column {name!r}")
    rows = phenotypes[phenotypes[KEY].isin(set(subjects))]
    dup = rows[KEY][rows[KEY].duplicated(keep=False)].unique()
    if len(dup):
        log.warning(
            "%s: subject(s) listed more than once in the phenotype table are left out: %s",
            name,
            _names(sorted(dup)),
        )
        rows = rows[~rows[KEY].isin(set(dup))]
    values = rows.set_index(KEY)[name]
    if target.kind == REGRESSION:
        numeric = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & numeric.isna()
        if bad.any():
            raise ProbeError(
                f"{name}: a regression target, but non-numeric values for subject(s) "
                + _names([f"{s} ({v!r})" for s, v in values[bad].items()])
            )
        values = numeric
    else:
        values = values.dropna().astype(str)
    values = values.dropna()
    missing = sorted(set(subjects) - set(values.index) - set(dup))
    if missing:
        log.warning(
            "%s: no value for %d probed subject(s): %s", name, len(missing), _names(missing)
        )
    if target.kind == CLASSIFICATION and values.nunique() < 2:
        raise ProbeError(
            f"{name}: only one class ({_names(values.unique())}) among the "
            f"{len(values)} probed subjects with a value; nothing to classify"
        )
    return values.sort_index()


# --- one fit ---------------------------------------------------------------------------------


def alpha_grid(n_features: int) -> np.ndarray:
    """Ridge penalties ``n_features × 10^-3 .. 10^3`` (logistic C is 1/alpha).

    On standardised features the data term ``XᵀX`` grows with the feature count, so a fixed
    grid sits too low for hundreds of encoder features; scaled, it spans the same effective range
    for 8 morphometry columns and 768 encoder channels.
    """
    return n_features * PENALTIES_PER_FEATURE


def _folds(kind: str, n_splits: int, seed: int, grouped: bool = False):
    """The CV splitter; ``grouped``: each participant's sessions stay in one fold (the
    ``groups`` given to ``split``)."""
    if grouped:
        if kind == CLASSIFICATION:
            return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    if kind == CLASSIFICATION:
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return KFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _split(kind: str, wanted: int, seed: int, y: np.ndarray, groups: np.ndarray | None, label: str):
    """The (train, test) index pairs of a cross-validation of ``y``, by participant when
    ``groups`` is given (sessions of one person never on both sides)."""
    n = n_folds(kind, y, wanted, label)
    if groups is None:
        return list(_folds(kind, n, seed).split(y, y))
    people = len(np.unique(groups))
    if people < 2:
        raise ProbeError(f"{label}: every subject belongs to one participant; nothing to split")
    return list(_folds(kind, min(n, people), seed, grouped=True).split(y, y, groups))


def n_folds(kind: str, y: np.ndarray, wanted: int, label: str) -> int:
    """Folds a cross-validation of ``y`` can have (at most ``wanted``); ProbeError when < 2."""
    if kind == CLASSIFICATION:
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise ProbeError(f"{label}: only one class among {len(y)} subjects")
        n = min(wanted, int(counts.min()))
        if n < 2:
            raise ProbeError(
                f"{label}: the rarest class has {counts.min()} subject(s); at least 2 per class "
                "are needed for cross-validation"
            )
        return n
    if len(y) < 4:
        raise ProbeError(f"{label}: {len(y)} subjects; at least 4 are needed")
    return min(wanted, len(y))


@dataclass
class Fit:
    """Predictions of one fitted probe on its test subjects, and the chosen hyperparameter."""

    pred: np.ndarray
    proba: np.ndarray | None  # columns follow the target's classes
    chosen: float


def standardise(x_train: np.ndarray, x_other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median imputation and z-scoring, both fitted on ``x_train`` (columns without any training
    value are dropped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        median = np.nanmedian(x_train, axis=0)
    keep = np.isfinite(median)
    median = median[keep]

    def fill(x: np.ndarray) -> np.ndarray:
        x = x[:, keep]
        return np.where(np.isnan(x), median, x)

    a, b = fill(x_train), fill(x_other)
    mean, sd = a.mean(axis=0), a.std(axis=0)
    sd[sd == 0] = 1.0
    return (a - mean) / sd, (b - mean) / sd


def _ridge_path(a, y, b, alphas) -> list[np.ndarray]:
    """Ridge predictions for every penalty at once (one SVD; ``a`` is centred by standardise)."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    uty = u.T @ (y - y.mean())
    coefs = (s[None] / (s[None] ** 2 + np.asarray(alphas)[:, None]) * uty[None]) @ vt
    return list(coefs @ b.T + y.mean())


def _logistic_path(a, y, b, alphas, classes) -> list[np.ndarray]:
    """L2 logistic class probabilities (columns: ``classes``) for every penalty, warm-started
    from the strongest penalty to the weakest."""
    # Newton steps converge in a few iterations where the features are few (morphometry);
    # L-BFGS scales to hundreds of encoder channels.
    solver = "newton-cholesky" if a.shape[1] <= a.shape[0] else "lbfgs"
    model = LogisticRegression(solver=solver, max_iter=200, warm_start=True)
    out: dict[int, np.ndarray] = {}
    for i in np.argsort(alphas)[::-1]:
        model.set_params(C=1.0 / alphas[i])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # separable data, tiny penalty
            model.fit(a, y)
        proba = np.zeros((len(b), len(classes)))
        proba[:, np.searchsorted(classes, model.classes_)] = model.predict_proba(b)
        out[int(i)] = proba
    return [out[i] for i in range(len(alphas))]


def _knn_path(a, y, b, ks, classes) -> list[np.ndarray]:
    """k-NN on cosine similarity for every k at once: the mean of the k nearest targets, or the
    class shares among them (columns: ``classes``)."""
    unit = lambda m: m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)  # noqa: E731
    order = np.argsort(-(unit(b) @ unit(a).T), axis=1, kind="stable")[:, : int(max(ks))]
    near = y[order]
    if classes is None:
        cum = np.cumsum(near, axis=1)
        return [cum[:, int(k) - 1] / k for k in ks]
    counts = np.stack([np.cumsum(near == c, axis=1) for c in classes], axis=2)
    return [counts[:, int(k) - 1, :] / k for k in ks]


def _path(method, kind, a, y, b, grid, classes) -> list[np.ndarray]:
    if method == KNN:
        return _knn_path(a, y, b, grid, classes)
    if kind == REGRESSION:
        return _ridge_path(a, y, b, grid)
    return _logistic_path(a, y, b, grid, classes)


def _predicted(out: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    return out if classes is None else classes[np.argmax(out, axis=1)]


def _selection_score(y: np.ndarray, out: np.ndarray, classes: np.ndarray | None) -> float:
    """What the inner search maximises: -MAE, or balanced accuracy."""
    pred = _predicted(out, classes)
    if classes is None:
        return -float(np.abs(y - pred).mean())
    present = np.unique(y)
    return float(np.mean([(pred[y == c] == c).mean() for c in present]))


def fit_predict(
    method: str,
    kind: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    classes: np.ndarray | None,
    inner_folds: int,
    seed: int,
    label: str,
    groups: np.ndarray | None = None,
) -> Fit:
    """Fit one probe on the training subjects and predict the test subjects.

    The penalty (``linear``) or k (``knn``) is the grid value with the best mean inner-fold
    score (-MAE, or balanced accuracy; the first on a tie); imputation and scaling are fitted
    on each inner training part, then on all training subjects for the final fit. ``groups``
    (participant per training subject) keeps each participant's sessions in one inner fold.
    """
    pairs = _split(kind, inner_folds, seed, y_train, groups, f"{label} (inner search)")
    inner = len(pairs)
    if method == LINEAR:
        grid = alpha_grid(x_train.shape[1])
    else:
        smallest_fold = len(y_train) - math.ceil(len(y_train) / inner)
        grid = np.array([k for k in KNN_K if k <= smallest_fold] or [1], dtype=float)
    totals = np.zeros(len(grid))
    for tr, va in pairs:
        a, b = standardise(x_train[tr], x_train[va])
        outs = _path(method, kind, a, y_train[tr], b, grid, classes)
        totals += [_selection_score(y_train[va], o, classes) for o in outs]
    best = int(np.argmax(totals))
    a, b = standardise(x_train, x_test)
    out = _path(method, kind, a, y_train, b, grid[best : best + 1], classes)[0]
    proba = None if classes is None else out
    return Fit(_predicted(out, classes), proba, float(grid[best]))


# --- scores and intervals --------------------------------------------------------------------


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


# --- one target ------------------------------------------------------------------------------


def choose_protocol(
    target: Target, values: pd.Series, split: pd.Series, settings: ProbeSettings
) -> tuple[str, list[str], list[str]]:
    """The protocol of a target and its (training, test) subjects (test: all under nested CV)."""
    side = split.reindex(values.index)
    train = [s for s in values.index if side[s] == TRAIN]
    test = [s for s in values.index if side[s] == HOLDOUT]
    why = None
    if len(test) < settings.min_holdout:
        why = (
            f"{len(test)} held-out subject(s) with a value, fewer than probe.min_holdout "
            f"{settings.min_holdout}"
        )
    elif target.kind == CLASSIFICATION and values[test].nunique() < 2:
        why = f"the held-out subjects hold one class only ({values[test].iloc[0]})"
    elif target.kind == CLASSIFICATION and values[train].nunique() < 2:
        why = "the training subjects hold one class only"
    if why is None:
        return HOLDOUT_PROTOCOL, train, test
    log.warning(
        "%s: %s (%s): nested %d-fold cross-validation over all %d probed subjects instead",
        target.name,
        why,
        _names(test),
        settings.folds,
        len(values),
    )
    return NESTED_CV, list(values.index), list(values.index)


def _matrix(frame: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    cols = [c for c in frame.columns if c != KEY]
    x = frame.set_index(KEY).reindex(ids)[cols]
    return x.loc[:, x.notna().any()].to_numpy(np.float64)


def _has_features(frame: pd.DataFrame) -> set[str]:
    cols = [c for c in frame.columns if c != KEY]
    return set(frame.loc[frame[cols].notna().any(axis=1), KEY].astype(str))


def probe_target(
    target: Target,
    values: pd.Series,
    feature_sets: Mapping[str, Sequence[pd.DataFrame]],
    split: pd.Series,
    settings: ProbeSettings,
    participants: Mapping[str, str] | None = None,
) -> dict:
    """Both probes of every feature set (a list of frames: replicates such as random-init
    seeds, averaged) at every label fraction, under the target's protocol. ``participants``
    (subject id → participant) keeps each participant's sessions in one fold of every
    cross-validation."""
    common = set(values.index)
    for frames in feature_sets.values():
        for frame in frames:
            common &= _has_features(frame)
    dropped = sorted(set(values.index) - common)
    if dropped:
        log.warning(
            "%s: %d subject(s) lack features in some set and are left out: %s",
            target.name,
            len(dropped),
            _names(dropped),
        )
    values = values[sorted(common)]
    protocol, train_ids, test_ids = choose_protocol(target, values, split, settings)
    y_all = values.to_numpy()
    pos = {s: i for i, s in enumerate(values.index)}
    train_idx = np.array([pos[s] for s in train_ids])
    test_idx = np.array([pos[s] for s in test_ids])
    classes = np.unique(y_all) if target.kind == CLASSIFICATION else None
    groups = None
    if participants is not None:
        groups = np.array([str(participants.get(s, s)) for s in values.index])
    if protocol == HOLDOUT_PROTOCOL:
        pairs = [(train_idx, test_idx)]
    else:
        pairs = _split(target.kind, settings.folds, settings.seed, y_all, groups, target.name)
    y_test = y_all[test_idx]
    out = {
        "kind": target.kind,
        "protocol": protocol,
        "train_subjects": train_ids,
        "test_subjects": test_ids,
        "results": [],
        "skipped": [],
        "hyperparameters": [],
    }
    for features, frames in feature_sets.items():
        xs = [_matrix(frame, list(values.index)) for frame in frames]
        for method in METHODS:
            label = f"{target.name} / {features} / {method}"
            chosen: list[float] = []
            for fraction in settings.label_fractions:
                draws = 1 if fraction >= 1 else settings.label_draws
                try:
                    fits, n_train = _fits(
                        method, target.kind, xs, y_all, pairs, test_idx, classes, fraction, draws,
                        settings, label, chosen, groups,
                    )  # fmt: skip
                except ProbeError as exc:
                    msg = f"{label}: label fraction {fraction:g} skipped: {exc}"
                    log.warning("%s", msg)
                    out["skipped"].append(msg)
                    continue
                out["results"].append(
                    {
                        "features": features,
                        "method": method,
                        "label_fraction": fraction,
                        "n_train": n_train,
                        "n_test": len(test_idx),
                        "replicates": len(xs),
                        "draws": draws,
                        "metrics": summarise(
                            target.kind, y_test, fits, classes, settings.bootstrap, settings.seed
                        ),
                    }
                )
            out["hyperparameters"].append(_edges(label, method, features, chosen, xs))
    return out


def _fits(
    method: str,
    kind: str,
    xs: Sequence[np.ndarray],
    y: np.ndarray,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    test_idx: np.ndarray,
    classes: np.ndarray | None,
    fraction: float,
    draws: int,
    settings: ProbeSettings,
    label: str,
    chosen: list[float],
    groups: np.ndarray | None = None,
) -> tuple[list[Fit], int]:
    """One fit per replicate and draw at one label fraction (predictions on the test subjects,
    out of fold under nested CV); appends the chosen hyperparameters to ``chosen``."""
    fits, n_train = [], []
    for x in xs:
        for draw in range(draws):
            pred = np.empty(len(y), dtype=object)
            proba = None if classes is None else np.zeros((len(y), len(classes)))
            for tr, te in pairs:
                strata = None if classes is None else y[tr]
                sub = tr[label_subset(len(tr), fraction, draw, settings.seed, strata)]
                n_train.append(len(sub))
                fit = fit_predict(
                    method, kind, x[sub], y[sub], x[te], classes, settings.inner_folds,
                    settings.seed + 1, label, None if groups is None else groups[sub],
                )  # fmt: skip
                pred[te] = fit.pred
                if proba is not None:
                    proba[te] = fit.proba
                chosen.append(fit.chosen)
            kept = pred[test_idx].astype(float if classes is None else str)
            fits.append(Fit(kept, None if proba is None else proba[test_idx], np.nan))
    return fits, round(float(np.mean(n_train)))


def _edges(
    label: str, method: str, features: str, chosen: Sequence[float], xs: Sequence[np.ndarray]
) -> dict:
    """The hyperparameters chosen for one probe, flagged (and warned about) at a grid edge."""
    parameter = "k" if method == KNN else "alpha"
    edges = 0
    if method == LINEAR:
        grid = alpha_grid(xs[0].shape[1])
        edges = sum(bool(np.isclose(c, grid[0]) or np.isclose(c, grid[-1])) for c in chosen)
    if edges:
        log.warning(
            "%s: the chosen %s sat at an edge of its grid (%.3g..%.3g) in %d of %d fits",
            label, parameter, grid[0], grid[-1], edges, len(chosen),
        )  # fmt: skip
    return {
        "features": features,
        "method": method,
        "parameter": parameter,
        "chosen": [float(c) for c in chosen],
        "at_edge": bool(edges),
        "fits_at_edge": int(edges),
    }


def probe_all(
    feature_sets: Mapping[str, Sequence[pd.DataFrame]],
    phenotypes: pd.DataFrame,
    targets: Sequence[Target],
    split: pd.Series,
    settings: ProbeSettings,
    participants: Mapping[str, str] | None = None,
) -> dict[str, dict]:
    """Every target (one that cannot run records why; the others still run).

    ``split``: ``train`` / ``holdout`` per probed subject id (its index); ``participants``:
    subject id → participant, for folds by participant (see :func:`probe_target`).
    """
    out: dict[str, dict] = {}
    subjects = list(split.index)
    for target in targets:
        try:
            values = target_values(phenotypes, target, subjects)
            out[target.name] = probe_target(
                target, values, feature_sets, split, settings, participants
            )
        except ProbeError as exc:
            log.warning("%s", exc)
            out[target.name] = {"kind": target.kind, "error": str(exc)}
    return out


def result_rows(results: Mapping[str, dict]) -> pd.DataFrame:
    """``probe.tsv``: one row per target, features, method, label fraction and metric."""
    rows = []
    for target, res in results.items():
        for r in res.get("results", []):
            for metric, m in r["metrics"].items():
                rows.append(
                    {
                        "target": target,
                        "features": r["features"],
                        "method": r["method"],
                        "label_fraction": r["label_fraction"],
                        "metric": metric,
                        "mean": m["mean"],
                        "ci_low": m["ci_low"],
                        "ci_high": m["ci_high"],
                        "n_train": r["n_train"],
                        "n_test": r["n_test"],
                        "protocol": res["protocol"],
                    }
                )
    numbers = dict.fromkeys(("label_fraction", "mean", "ci_low", "ci_high"), float)
    return pd.DataFrame(rows, columns=TSV_COLUMNS).astype(numbers)


# --- encoder features ------------------------------------------------------------------------


def foreground_box(image: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the nonzero voxels (the cache's background is 0)."""
    nonzero = np.nonzero(np.asarray(image) != 0)
    if not len(nonzero[0]):
        raise ProbeError("the volume holds no foreground voxel")
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in nonzero)


def probe_grid(shapes: Sequence[Sequence[int]], stride: int) -> tuple[int, ...]:
    """One grid for every subject: the largest foreground extent per axis, rounded up to the
    encoder's stride."""
    top = np.max(np.asarray(shapes), axis=0)
    return tuple(int(math.ceil(s / stride) * stride) for s in top)


def centred(image: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """The foreground of ``image`` cropped to its box and centred in a zero volume of ``grid``
    (a box larger than the grid is cropped symmetrically)."""
    crop = np.asarray(image[foreground_box(image)], np.float32)
    out = np.zeros(tuple(grid), np.float32)
    src, dst = [], []
    for size, g in zip(crop.shape, grid, strict=True):
        if size <= g:
            off = (g - size) // 2
            src.append(slice(0, size))
            dst.append(slice(off, off + size))
        else:
            off = (size - g) // 2
            src.append(slice(off, off + g))
            dst.append(slice(0, g))
    out[tuple(dst)] = crop[tuple(src)]
    return out


def foreground_features(encoder, image: np.ndarray, grid: Sequence[int]):
    """Padding-independent pooled features (C,) of one volume: its foreground centred on the
    common ``grid``, then :func:`damt.model.encoder.pooled_features` (the last stage's tokens
    averaged over those whose footprint holds a foreground voxel)."""
    import torch

    from damt.model import pooled_features

    return pooled_features(encoder, torch.from_numpy(centred(image, grid)))[0]


def encoder_features(encoder, cache_dirs: Mapping[str, Path], grid: Sequence[int]) -> pd.DataFrame:
    """:func:`foreground_features` of each subject's cached volume (frozen encoder)."""
    from damt.paths import IMAGE_FILE

    rows = []
    for sid, folder in cache_dirs.items():
        image = np.load(Path(folder) / IMAGE_FILE, mmap_mode="r")
        rows.append([sid, *foreground_features(encoder, image, grid).cpu().numpy().tolist()])
    width = len(rows[0]) - 1 if rows else 0
    return pd.DataFrame(rows, columns=[KEY, *(f"f{i}" for i in range(width))])


def cohort_grid(cache_dirs: Mapping[str, Path], stride: int) -> tuple[int, ...]:
    """:func:`probe_grid` of the probed subjects' cached volumes."""
    from damt.paths import IMAGE_FILE

    shapes = []
    for folder in cache_dirs.values():
        box = foreground_box(np.load(Path(folder) / IMAGE_FILE, mmap_mode="r"))
        shapes.append([b.stop - b.start for b in box])
    return probe_grid(shapes, stride)


# --- figures ---------------------------------------------------------------------------------

FEATURE_SET_COLOURS = {
    "pretrained": "tab:blue",
    "random_init": "tab:gray",
    "morphometry": "tab:green",
}
CHANCE = {"r2": 0.0, "balanced_accuracy": 0.5, "auc": 0.5}
PRIMARY = {REGRESSION: "r2", CLASSIFICATION: "auc"}
R2_FLOOR = -1.0  # lowest R² the figures show (the table keeps every value)


def plot_results(table: pd.DataFrame, path: str | Path) -> None:
    """One panel per (target, metric) at the full label fraction: each feature set and probe
    with its bootstrap 95 % interval; chance marked."""
    import matplotlib.pyplot as plt

    from damt.io import save_figure

    full = table[table["label_fraction"] == table["label_fraction"].max()]
    panels = list(full.groupby(["target", "metric"], sort=False))
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(3.6 * max(len(panels), 1), 3.6))
    axes = np.atleast_1d(axes)
    for ax, ((target, metric), sub) in zip(axes, panels, strict=False):
        labels = [f"{f}\n{m}" for f, m in zip(sub["features"], sub["method"], strict=True)]
        err = np.vstack([sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]])
        ax.bar(
            labels,
            sub["mean"],
            yerr=np.clip(np.nan_to_num(err), 0, None),
            capsize=3,
            color=[FEATURE_SET_COLOURS.get(f, "tab:purple") for f in sub["features"]],
            hatch=["" if m == LINEAR else "//" for m in sub["method"]],
        )
        if metric in CHANCE:
            ax.axhline(CHANCE[metric], color="red", lw=1, ls="--", label="chance")
            ax.legend(fontsize=7)
        ax.set_title(
            f"{target}: {metric} ({sub['protocol'].iloc[0]}, n_test={int(sub['n_test'].max())})",
            fontsize=8,
        )
        if metric == "r2":  # a few test subjects make R²'s lower interval ends run off
            ax.set_ylim(max(R2_FLOOR, ax.get_ylim()[0]), 1)
        ax.tick_params(axis="x", labelsize=6, rotation=30)
    fig.suptitle("Probes of frozen features (bars: mean; whiskers: bootstrap 95 % interval)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_label_efficiency(table: pd.DataFrame, kinds: Mapping[str, str], path: str | Path):
    """Per target, its primary metric (R², ROC AUC) against the share of labelled training
    subjects, one line per feature set and probe, with the 95 % interval shaded."""
    import matplotlib.pyplot as plt

    from damt.io import save_figure

    targets = list(dict.fromkeys(table["target"]))
    fig, axes = plt.subplots(1, max(len(targets), 1), figsize=(4.2 * max(len(targets), 1), 3.6))
    axes = np.atleast_1d(axes)
    for ax, target in zip(axes, targets, strict=False):
        metric = PRIMARY[kinds[target]]
        rows = table[(table["target"] == target) & (table["metric"] == metric)]
        for (features, method), sub in rows.groupby(["features", "method"], sort=False):
            sub = sub.sort_values("label_fraction")
            colour = FEATURE_SET_COLOURS.get(features, "tab:purple")
            style = "-" if method == LINEAR else "--"
            ax.plot(sub["label_fraction"], sub["mean"], style, marker="o", color=colour,
                    label=f"{features} {method}")  # fmt: skip
            ax.fill_between(sub["label_fraction"], sub["ci_low"], sub["ci_high"], color=colour,
                            alpha=0.12)  # fmt: skip
        ax.axhline(CHANCE[metric], color="red", lw=1, ls=":")
        if metric == "r2":
            ax.set_ylim(max(R2_FLOOR, ax.get_ylim()[0]), 1)
        ax.set_xscale("log")
        fractions = sorted(set(rows["label_fraction"]))
        ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("share of labelled training subjects")
        ax.set_title(f"{target}: {metric}", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("Label efficiency (held-out scores; nested subsets, averaged draws)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_embedding(
    features: pd.DataFrame, phenotypes: pd.DataFrame, targets: Sequence[Target], seed: int, path
) -> None:
    """A 2-D t-SNE of the pretrained features, one panel per target coloured by its value."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from damt.io import save_figure

    raw = features.drop(columns=KEY).to_numpy(np.float64)
    x = standardise(raw, raw)[0]
    fig, axes = plt.subplots(1, len(targets), figsize=(3.8 * len(targets), 3.6))
    axes = np.atleast_1d(axes)
    if len(x) >= 4:
        perplexity = float(min(30.0, (len(x) - 1) / 3))
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    else:
        xy = np.zeros((len(x), 2))
    pheno = phenotypes.drop_duplicates(KEY, keep=False).set_index(KEY)
    for ax, target in zip(axes, targets, strict=True):
        values = pheno[target.name].reindex(features[KEY]) if target.name in pheno else None
        if values is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=12, color="tab:gray")
        elif target.kind == REGRESSION:
            v = pd.to_numeric(values, errors="coerce").to_numpy()
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=v, s=14, cmap="viridis")
            fig.colorbar(sc, ax=ax, shrink=0.8)
        else:
            for level in sorted(values.dropna().astype(str).unique()):
                hit = (values.astype(str) == level).to_numpy()
                ax.scatter(xy[hit, 0], xy[hit, 1], s=14, label=level)
            ax.legend(fontsize=7)
        ax.set_title(f"pretrained features: {target.name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of pretrained features ({len(x)} subjects)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# --- the workflow's probe job ----------------------------------------------------------------


def run_probe(
    probe: Mapping,
    manifest: str | Path,
    encoder_path: str | Path,
    model_card: str | Path,
    morphometry_tables: Sequence[str | Path],
    outputs: Mapping[str, str | Path],
) -> dict:
    """The probe rule: frozen pretrained encoder vs. random-init encoders vs. morphometry.

    ``probe`` is the config's ``probe`` section (the rule's params); ``outputs`` names the files
    ``json``, ``table``, ``plot``, ``label_efficiency`` and ``embedding``.
    """
    import json

    pc = probe
    settings = ProbeSettings.from_config(pc)
    pretrain_seed = json.loads(Path(model_card).read_text())["pretraining"]["config"]["seed"]
    if pretrain_seed in pc["random_init_seeds"]:
        raise ProbeError(
            f"probe.random_init_seeds holds the pretraining seed {pretrain_seed}: that random "
            "encoder is the pretrained run's own starting point; choose other seeds"
        )

    import torch

    from damt.features.tables import read_table
    from damt.io import write_atomic, write_json_atomic
    from damt.model import build_encoder, encoder_stride, load_encoder, read_encoder_spec

    torch.set_num_threads(pc["threads"])
    frame = pd.read_parquet(manifest)
    chosen = frame[frame["status"].isin(pc["statuses"]) & frame["has_cache"]]
    base = Path(manifest).parent
    phenotypes = read_phenotypes(pc["phenotypes"])
    labelled = set(phenotypes[KEY])
    chosen = chosen[chosen[KEY].isin(labelled)].sort_values(KEY)
    cache_dirs = {r.subject_id: base / r.cache_dir for r in chosen.itertuples()}
    split = pd.Series(
        chosen["split"].to_numpy() if "split" in chosen else TRAIN, index=chosen[KEY].tolist()
    )
    log.info(
        "probing %d subjects with phenotypes (statuses %s): %d train, %d held out",
        len(chosen), "/".join(pc["statuses"]), int((split == TRAIN).sum()),
        int((split == HOLDOUT).sum()),
    )  # fmt: skip

    spec = read_encoder_spec(encoder_path)
    pretrained = load_encoder(encoder_path, spec)
    grid = cohort_grid(cache_dirs, encoder_stride(pretrained))
    log.info("encoding every subject on one %s grid (foreground centred)", "x".join(map(str, grid)))
    randoms = []
    for seed in pc["random_init_seeds"]:
        torch.manual_seed(seed)
        randoms.append(encoder_features(build_encoder(spec).eval(), cache_dirs, grid))
    morph = None
    for path in morphometry_tables:
        table, _ = read_table(path)
        morph = table if morph is None else morph.merge(table, on=KEY, how="outer")
    pretrained_features = encoder_features(pretrained, cache_dirs, grid)
    feature_sets = {
        "pretrained": [pretrained_features],
        "random_init": randoms,
        "morphometry": [morph],
    }
    targets = [Target(t["name"], t["type"]) for t in pc["targets"]]
    participants = (
        dict(zip(chosen[KEY], chosen["participant"].astype(str), strict=True))
        if "participant" in chosen
        else None
    )
    results = probe_all(feature_sets, phenotypes, targets, split, settings, participants)
    out = {
        "encoder": str(encoder_path),
        "phenotypes": pc["phenotypes"],
        "statuses": pc["statuses"],
        "grid": list(grid),
        "pretraining_seed": pretrain_seed,
        "random_init_seeds": list(pc["random_init_seeds"]),
        "settings": {k: v for k, v in pc.items() if k not in ("targets", "phenotypes")},
        "feature_sets": {k: int(v[0].shape[1] - 1) for k, v in feature_sets.items()},
        "split": {
            "train": sorted(split.index[split == TRAIN]),
            "holdout": sorted(split.index[split == HOLDOUT]),
        },
        "targets": results,
    }
    write_json_atomic(outputs["json"], out)
    table = result_rows(results)
    write_atomic(outputs["table"], lambda tmp: table.to_csv(tmp, sep="\t", index=False))
    plot_results(table, outputs["plot"])
    plot_label_efficiency(table, {t.name: t.kind for t in targets}, outputs["label_efficiency"])
    plot_embedding(pretrained_features, phenotypes, targets, settings.seed, outputs["embedding"])
    for rec in table[table["label_fraction"] == 1.0].itertuples():
        log.info(
            "%s / %s / %s: %s = %.3f [%.3f, %.3f] (n_train %d, n_test %d, %s)",
            rec.target, rec.features, rec.method, rec.metric, rec.mean, rec.ci_low,
            rec.ci_high, rec.n_train, rec.n_test, rec.protocol,
        )  # fmt: skip
    return out
