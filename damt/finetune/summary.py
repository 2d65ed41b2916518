"""Scores of the units and their summary: per task, init and labelled count the mean over seeds
with a percentile bootstrap 95 % interval over the held-out subjects, and the paired difference
pretrained − scratch (same seeds, same subject resamples) with its interval."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from damt.finetune.settings import MEAN_DICE, PRETRAINED, SCRATCH, SEGMENTATION, TASK_METRICS
from damt.probe.estimators import Fit
from damt.probe.metrics import INTERVAL_PERCENTILES, scores

ROW_COLUMNS = ["task", "init", "n_labelled", "seed", "metric", "value", "n_test"]
SUMMARY_COLUMNS = [
    "task", "init", "n_labelled", "metric", "mean", "ci_low", "ci_high", "n_seeds", "n_test",
]  # fmt: skip


def unit_scores(kind: str, result: Mapping, y: np.ndarray, classes, idx: np.ndarray) -> dict:
    """The task's metrics of one unit's held-out result on subject resamples ``idx`` (rows)."""
    if kind == SEGMENTATION:
        per_subject = np.nanmean(np.asarray(result["dice"], float), axis=1)
        return {MEAN_DICE: per_subject[idx].mean(1)}
    proba = None if result["proba"] is None else np.asarray(result["proba"])
    fit = Fit(np.asarray(result["pred"], dtype=y.dtype), proba, float("nan"))
    return scores(kind, y, fit, np.asarray(classes) if classes is not None else None, idx)


def unit_rows(unit, kind: str, result: Mapping, y: np.ndarray, classes, structures) -> list[dict]:
    """``finetune.tsv`` rows of one unit: each metric on every held-out subject (and, for
    segmentation, the Dice of each structure averaged over them)."""
    whole = np.arange(len(result["subjects"]))[None]
    base = {"task": unit.task, "init": unit.init, "n_labelled": result["n_labelled"],
            "seed": unit.seed, "n_test": len(result["subjects"])}  # fmt: skip
    rows = [
        {**base, "metric": m, "value": float(v[0])}
        for m, v in unit_scores(kind, result, y, classes, whole).items()
    ]
    if kind == SEGMENTATION:
        per_structure = np.nanmean(np.asarray(result["dice"], float), axis=0)
        rows += [
            {**base, "metric": f"dice:{name}", "value": float(d)}
            for name, d in zip(structures, per_structure, strict=True)
        ]
    return rows


def _interval(boot: np.ndarray) -> tuple[float, float]:
    finite = boot[np.isfinite(boot)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, INTERVAL_PERCENTILES)
    return float(lo), float(hi)


def summarise_task(
    task: str,
    kind: str,
    results: Mapping[tuple[str, int | str, int], Mapping],
    y: np.ndarray,
    classes,
    n_boot: int,
    seed: int,
) -> list[dict]:
    """``summary.tsv`` rows of one task: ``results`` maps (init, count, seed) to a unit's
    held-out result, every one on the same held-out subjects (``y``)."""
    n = len(y)
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    whole = np.arange(n)[None]
    rows = []
    for count in dict.fromkeys(c for _, c, _ in results):
        means, boots = {}, {}
        for init in (PRETRAINED, SCRATCH):
            units = [
                r for (i, c, _), r in sorted(results.items(), key=str) if i == init and c == count
            ]
            if not units:
                continue
            boots[init] = _seed_mean(kind, units, y, classes, idx)
            means[init] = _seed_mean(kind, units, y, classes, whole)
            n_labelled, n_seeds = units[0]["n_labelled"], len(units)
        for metric in TASK_METRICS[kind]:
            for init in means:
                lo, hi = _interval(boots[init][metric])
                rows.append(
                    {"task": task, "init": init, "n_labelled": n_labelled, "metric": metric,
                     "mean": float(means[init][metric][0]), "ci_low": lo, "ci_high": hi,
                     "n_seeds": n_seeds, "n_test": n}
                )  # fmt: skip
            if len(means) == 2:
                diff = boots[PRETRAINED][metric] - boots[SCRATCH][metric]
                lo, hi = _interval(diff)
                point = means[PRETRAINED][metric][0] - means[SCRATCH][metric][0]
                rows.append(
                    {"task": task, "init": "pretrained-scratch", "n_labelled": n_labelled,
                     "metric": metric, "mean": float(point), "ci_low": lo, "ci_high": hi,
                     "n_seeds": n_seeds, "n_test": n}
                )  # fmt: skip
    return rows


def _seed_mean(kind: str, units: Sequence[Mapping], y, classes, idx) -> dict[str, np.ndarray]:
    """Each metric per resample, averaged over the units (seeds)."""
    per_unit = [unit_scores(kind, r, y, classes, idx) for r in units]
    with warnings.catch_warnings():
        # A resample where no unit defines the metric (one class, a constant target) stays NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        return {m: np.nanmean([u[m] for u in per_unit], axis=0) for m in per_unit[0]}


# The `init` of the reference rows: the morphometry table's linear probe on the same split.
MORPHOMETRY_PROBE = "morphometry_probe"


def morphometry_reference(probe_table: str | Path, tasks: Mapping[str, str]) -> list[dict]:
    """``summary.tsv`` rows, for reference, of the probe's linear probe of the morphometry table
    (all labelled training subjects, held-out protocol) on the phenotype ``tasks`` (name →
    kind): the same held-out subjects, no fine-tuning."""
    table = pd.read_csv(probe_table, sep="\t")
    rows = table[
        (table["features"] == "morphometry") & (table["method"] == "linear")
        & (table["label_fraction"] == 1.0) & (table["protocol"] == "holdout")
        & table["target"].isin(list(tasks))
    ]  # fmt: skip
    return [
        {"task": r.target, "init": MORPHOMETRY_PROBE, "n_labelled": int(r.n_train),
         "metric": r.metric, "mean": r.mean, "ci_low": r.ci_low, "ci_high": r.ci_high,
         "n_seeds": 1, "n_test": int(r.n_test)}
        for r in rows.itertuples()
        if r.metric in TASK_METRICS[tasks[r.target]]
    ]  # fmt: skip


def summary_frame(rows: Sequence[Mapping]) -> pd.DataFrame:
    """``summary.tsv`` of its rows."""
    return pd.DataFrame(list(rows), columns=SUMMARY_COLUMNS)
