"""One probe fit: ridge / L2 logistic regression and cosine k-NN, hyperparameter chosen by an
inner cross-validation (numpy and scikit-learn only)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from damt.probe.settings import CLASSIFICATION, KNN, LINEAR, REGRESSION, ProbeError

KNN_K = (1, 3, 5, 7, 10, 15, 20, 30, 50)
# Ridge penalties per feature (logistic C is 1/alpha): alpha_grid scales them by the count.
PENALTIES_PER_FEATURE = np.logspace(-3, 3, 13)


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


def cv_split(
    kind: str, wanted: int, seed: int, y: np.ndarray, groups: np.ndarray | None, label: str
):
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
    pairs = cv_split(kind, inner_folds, seed, y_train, groups, f"{label} (inner search)")
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
