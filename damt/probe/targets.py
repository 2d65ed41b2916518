"""One target at a time: its protocol, both probes of every feature set at every label fraction,
and the rows of ``probe.tsv``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from damt.manifest import HOLDOUT, KEY, TRAIN
from damt.probe.estimators import Fit, alpha_grid, cv_split, fit_predict
from damt.probe.metrics import label_subset, summarise
from damt.probe.phenotypes import target_values
from damt.probe.settings import (
    CLASSIFICATION,
    HOLDOUT_PROTOCOL,
    KNN,
    LINEAR,
    METHODS,
    NESTED_CV,
    ProbeError,
    ProbeSettings,
    Target,
    listed,
)

log = logging.getLogger(__name__)
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
        listed(test),
        settings.folds,
        len(values),
    )
    return NESTED_CV, list(values.index), list(values.index)


@dataclass(frozen=True)
class Design:
    """One target's subjects as its fits see them."""

    kind: str
    y: np.ndarray  # (n,) the target of every probed subject
    pairs: list[tuple[np.ndarray, np.ndarray]]  # (train, test) indices: one pair, or the folds
    test_idx: np.ndarray  # the subjects scored (all of them under nested CV)
    classes: np.ndarray | None  # sorted class labels; None for regression
    groups: np.ndarray | None  # participant per subject: sessions stay in one fold


def _design(
    target: Target,
    values: pd.Series,
    split: pd.Series,
    settings: ProbeSettings,
    participants: Mapping[str, str] | None,
) -> tuple[Design, str, list[str], list[str]]:
    """The target's :class:`Design`, protocol, and training and test subject ids."""
    protocol, train_ids, test_ids = choose_protocol(target, values, split, settings)
    y = values.to_numpy()
    pos = {s: i for i, s in enumerate(values.index)}
    train_idx = np.array([pos[s] for s in train_ids])
    test_idx = np.array([pos[s] for s in test_ids])
    classes = np.unique(y) if target.kind == CLASSIFICATION else None
    groups = None
    if participants is not None:
        groups = np.array([str(participants.get(s, s)) for s in values.index])
    if protocol == HOLDOUT_PROTOCOL:
        pairs = [(train_idx, test_idx)]
    else:
        pairs = cv_split(target.kind, settings.folds, settings.seed, y, groups, target.name)
    return Design(target.kind, y, pairs, test_idx, classes, groups), protocol, train_ids, test_ids


def _matrix(frame: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    cols = [c for c in frame.columns if c != KEY]
    x = frame.set_index(KEY).reindex(ids)[cols]
    return x.loc[:, x.notna().any()].to_numpy(np.float64)


def _with_features(frame: pd.DataFrame) -> set[str]:
    """The subjects with at least one feature value in ``frame``."""
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
            common &= _with_features(frame)
    dropped = sorted(set(values.index) - common)
    if dropped:
        log.warning(
            "%s: %d subject(s) lack features in some set and are left out: %s",
            target.name,
            len(dropped),
            listed(dropped),
        )
    values = values[sorted(common)]
    design, protocol, train_ids, test_ids = _design(target, values, split, settings, participants)
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
                    fits, n_train, picked = _fits(
                        method, design, xs, fraction, draws, settings, label
                    )
                except ProbeError as exc:
                    msg = f"{label}: label fraction {fraction:g} skipped: {exc}"
                    log.warning("%s", msg)
                    out["skipped"].append(msg)
                    continue
                chosen += picked
                metrics = summarise(
                    target.kind, design.y[design.test_idx], fits, design.classes,
                    settings.bootstrap, settings.seed,
                )  # fmt: skip
                out["results"].append(
                    {
                        "features": features,
                        "method": method,
                        "label_fraction": fraction,
                        "n_train": n_train,
                        "n_test": len(design.test_idx),
                        "replicates": len(xs),
                        "draws": draws,
                        "metrics": metrics,
                    }
                )
            out["hyperparameters"].append(_edges(label, method, features, chosen, xs))
    return out


def _fits(
    method: str,
    design: Design,
    xs: Sequence[np.ndarray],
    fraction: float,
    draws: int,
    settings: ProbeSettings,
    label: str,
) -> tuple[list[Fit], int, list[float]]:
    """One fit per replicate and draw at one label fraction (predictions on the test subjects,
    out of fold under nested CV), the mean training count, and the hyperparameters chosen."""
    y, classes, groups = design.y, design.classes, design.groups
    fits, n_train, chosen = [], [], []
    for x in xs:
        for draw in range(draws):
            pred = np.empty(len(y), dtype=object)
            proba = None if classes is None else np.zeros((len(y), len(classes)))
            for tr, te in design.pairs:
                strata = None if classes is None else y[tr]
                sub = tr[label_subset(len(tr), fraction, draw, settings.seed, strata)]
                n_train.append(len(sub))
                fit = fit_predict(
                    method, design.kind, x[sub], y[sub], x[te], classes, settings.inner_folds,
                    settings.seed + 1, label, None if groups is None else groups[sub],
                )  # fmt: skip
                pred[te] = fit.pred
                if proba is not None:
                    proba[te] = fit.proba
                chosen.append(fit.chosen)
            kept = pred[design.test_idx].astype(float if classes is None else str)
            fits.append(Fit(kept, None if proba is None else proba[design.test_idx], np.nan))
    return fits, round(float(np.mean(n_train))), chosen


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
