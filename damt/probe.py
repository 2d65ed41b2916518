"""Linear probing: how much a frozen representation says about a phenotype.

Missing feature values are imputed with the training fold's median and features are
standardised, both inside each training fold, then ridge regression (continuous
targets) or L2 logistic regression (categorical targets) is fitted with nested cross-validation:
the regularisation strength is chosen from ``10^-2 .. 10^2`` by an inner 5-fold search on the
training part of every outer fold, and the outer folds score it (MAE and R², or balanced accuracy
and ROC AUC), reported as mean ± standard deviation over the outer folds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)
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


def _folds(kind: str, y: np.ndarray, n_splits: int, seed: int, grouped: bool = False):
    """The CV splitter; ``grouped`` keeps each participant's sessions in one fold (the
    ``groups`` passed to ``split``)."""
    if grouped:
        if kind == CLASSIFICATION:
            return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    if kind == CLASSIFICATION:
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return KFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _n_splits(
    kind: str, y: np.ndarray, wanted: int, label: str, groups: np.ndarray | None = None
) -> int:
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
    if groups is not None:
        n = min(n, len(np.unique(groups)))
        if n < 2:
            raise ProbeError(f"{label}: one participant; at least 2 are needed")
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
    groups: np.ndarray | None = None,
) -> dict:
    """Nested cross-validated linear probe; returns metrics per fold and their mean ± std.

    ``groups`` (one participant id per row) keeps all sessions of a participant on the same
    side of every outer and inner split.
    """
    if x.ndim != 2 or len(x) != len(y):
        raise ProbeError(f"{label}: features {x.shape} do not match {len(y)} targets")
    if x.shape[1] == 0:
        raise ProbeError(f"{label}: no feature columns")
    outer_n = _n_splits(kind, y, n_splits, label, groups)
    grouped = groups is not None
    # Imputing inside the pipeline keeps the held-out fold out of the fill values; columns
    # missing for every training subject are dropped by the imputer.
    prepare = (SimpleImputer(strategy="median"), StandardScaler())
    if kind == REGRESSION:
        model = make_pipeline(*prepare, Ridge())
        params = {"ridge__alpha": list(grid)}
        scoring = "neg_mean_absolute_error"
    else:
        model = make_pipeline(*prepare, LogisticRegression(max_iter=5000))
        params = {"logisticregression__C": [1.0 / a for a in grid]}
        scoring = "balanced_accuracy"
    folds: dict[str, list[float]] = {}
    chosen = []
    for train, test in _folds(kind, y, outer_n, seed, grouped).split(x, y, groups):
        inner_groups = groups[train] if grouped else None
        inner_n = _n_splits(kind, y[train], inner_splits, f"{label} (inner)", inner_groups)
        search = GridSearchCV(
            model, params, scoring=scoring, cv=_folds(kind, y[train], inner_n, seed + 1, grouped)
        )
        search.fit(x[train], y[train], groups=inner_groups)
        chosen.append(float(next(iter(search.best_params_.values()))))
        if kind == REGRESSION:
            pred = search.predict(x[test])
            # Chance: the training fold's mean predicted for every test subject.
            chance = np.full(len(test), y[train].mean())
            scores = {
                "mae": mean_absolute_error(y[test], pred),
                "r2": r2_score(y[test], pred),
                "mae_chance": mean_absolute_error(y[test], chance),
            }
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

    Subjects without any feature value, and columns without any value, are dropped; partly
    missing rows (one unreadable stats file, a FreeSurfer version without some measure) stay
    and are imputed inside the CV, so every feature set is scored on the same subjects.
    """
    if target.name not in phenotypes.columns:
        raise ProbeError(f"phenotype table has no column {target.name!r}")
    pheno = phenotypes[["subject_id", target.name]].dropna()
    merged = features.merge(pheno, on="subject_id", how="inner")
    if subjects is not None:
        merged = merged[merged["subject_id"].isin(set(subjects))]
    cols = [c for c in features.columns if c != "subject_id"]
    merged = merged[merged[cols].notna().any(axis=1)].sort_values("subject_id")
    cols = [c for c in cols if merged[c].notna().any()]
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
    participants: Mapping[str, str] | None = None,
) -> dict:
    """Every (feature set, target) probe; a probe that cannot run records why.

    ``participants`` (subject id → participant id) makes the folds split by participant.
    """
    out: dict[str, dict] = {}
    for target in targets:
        out[target.name] = {}
        for name, frame in feature_sets.items():
            label = f"{name} -> {target.name}"
            try:
                x, y, ids = align(frame, phenotypes, target, subjects)
                groups = np.array([participants.get(i, i) for i in ids]) if participants else None
                res = nested_cv(
                    x, y, target.kind, n_splits, inner_splits, seed=seed, label=label, groups=groups
                )
                res["subjects"] = ids
            except ProbeError as exc:
                log.warning("%s", exc)
                res = {"kind": target.kind, "error": str(exc)}
            out[target.name][name] = res
    return out


# --- the workflow's probe job -------------------------------------------------------------------

FEATURE_SET_COLOURS = {
    "pretrained": "tab:blue",
    "random_init": "tab:gray",
    "morphometry": "tab:green",
}
CHANCE = {"r2": 0.0, "balanced_accuracy": 0.5, "auc": 0.5}


def read_phenotypes(path: str | Path) -> pd.DataFrame:
    """A phenotype table (TSV or CSV) with a ``subject_id`` column."""
    sep = "," if str(path).endswith(".csv") else "\t"
    frame = pd.read_csv(path, sep=sep)
    if "subject_id" not in frame.columns:
        raise ProbeError(f"phenotype table {path} has no 'subject_id' column")
    frame["subject_id"] = frame["subject_id"].astype(str)
    return frame


def encoder_features(encoder, cache_dirs: Mapping[str, Path]) -> pd.DataFrame:
    """Pooled last-stage features of each subject's whole cached volume (frozen encoder)."""
    import torch

    from damt.model import pooled_features
    from damt.stages.cache import IMAGE_FILE

    rows = []
    for sid, folder in cache_dirs.items():
        image = np.load(Path(folder) / IMAGE_FILE, mmap_mode="r")
        feats = pooled_features(encoder, torch.from_numpy(np.asarray(image, np.float32)))
        rows.append([sid, *feats[0].cpu().numpy().tolist()])
    width = len(rows[0]) - 1 if rows else 0
    return pd.DataFrame(rows, columns=["subject_id", *(f"f{i}" for i in range(width))])


def result_rows(results: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """Flat table: target, features, metric, mean, std, n_subjects (or the error)."""
    rows = []
    for target, by_set in results.items():
        for features, res in by_set.items():
            if "error" in res:
                rows.append(
                    {
                        "target": target,
                        "features": features,
                        "metric": "",
                        "mean": np.nan,
                        "std": np.nan,
                        "n_subjects": 0,
                        "error": res["error"],
                    }
                )
                continue
            for metric, m in res["metrics"].items():
                rows.append(
                    {
                        "target": target,
                        "features": features,
                        "metric": metric,
                        "mean": m["mean"],
                        "std": m["std"],
                        "n_subjects": res["n_subjects"],
                        "error": "",
                    }
                )
    return pd.DataFrame(rows)


def plot_results(table: pd.DataFrame, path: str | Path) -> None:
    """One panel per (target, metric): mean ± SD over folds per feature set, chance marked."""
    import matplotlib.pyplot as plt

    from damt.io import write_atomic

    ok = table[table["metric"] != ""]
    panels = [p for p in ok.groupby(["target", "metric"], sort=False) if p[0][1] != "mae_chance"]
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.4), squeeze=False)
    for ax, ((target, metric), sub) in zip(axes[0], panels, strict=False):
        ax.bar(
            sub["features"],
            sub["mean"],
            yerr=sub["std"],
            capsize=4,
            color=[FEATURE_SET_COLOURS.get(f, "tab:purple") for f in sub["features"]],
        )
        chance = CHANCE.get(metric)
        if metric == "mae":
            ref = ok[(ok["target"] == target) & (ok["metric"] == "mae_chance")]["mean"]
            chance = float(ref.mean()) if len(ref) else None
        if chance is not None:
            ax.axhline(chance, color="red", lw=1, ls="--", label="chance")
            ax.legend(fontsize=7)
        ax.set_title(f"{target}: {metric} (n={int(sub['n_subjects'].max())})", fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    fig.suptitle("Linear probe, nested 5-fold CV (mean ± SD over outer folds)")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


def run_probe(
    probe: Mapping,
    manifest: str | Path,
    encoder_path: str | Path,
    morphometry_tables: Sequence[str | Path],
    out_json: str | Path,
    out_table: str | Path,
    out_plot: str | Path,
) -> dict:
    """The probe rule: frozen pretrained encoder vs. random-init encoder vs. morphometry.

    ``probe`` is the config's ``probe`` section (the rule's params).
    """
    import torch

    from damt.features.tables import KEY, read_table
    from damt.io import write_atomic, write_json_atomic
    from damt.model import build_encoder, load_encoder, read_encoder_spec

    pc = probe
    torch.set_num_threads(pc["threads"])
    frame = pd.read_parquet(manifest)
    chosen = frame[frame["status"].isin(pc["statuses"]) & frame["has_cache"]]
    base = Path(manifest).parent
    cache_dirs = {r.subject_id: base / r.cache_dir for r in chosen.itertuples()}
    phenotypes = read_phenotypes(pc["phenotypes"])
    with_pheno = {s: d for s, d in cache_dirs.items() if s in set(phenotypes[KEY])}
    log.info(
        "probing %d subjects (statuses %s, with phenotypes)",
        len(with_pheno),
        "/".join(pc["statuses"]),
    )

    spec = read_encoder_spec(encoder_path)
    torch.manual_seed(pc["seed"])
    random_encoder = build_encoder(spec).eval()
    morph = None
    for path in morphometry_tables:
        table, _ = read_table(path)
        morph = table if morph is None else morph.merge(table, on=KEY, how="outer")
    feature_sets = {
        "pretrained": encoder_features(load_encoder(encoder_path, spec), with_pheno),
        "random_init": encoder_features(random_encoder, with_pheno),
        "morphometry": morph,
    }
    targets = [Target(t["name"], t["type"]) for t in pc["targets"]]
    results = probe_all(
        feature_sets,
        phenotypes,
        targets,
        subjects=list(with_pheno),
        n_splits=pc["folds"],
        inner_splits=pc["inner_folds"],
        seed=pc["seed"],
        participants=(
            dict(zip(frame[KEY], frame["participant"], strict=True))
            if "participant" in frame
            else None
        ),
    )
    out = {
        "encoder": str(encoder_path),
        "phenotypes": pc["phenotypes"],
        "statuses": pc["statuses"],
        "feature_sets": {k: int(v.shape[1] - 1) for k, v in feature_sets.items()},
        "results": results,
    }
    write_json_atomic(out_json, out)
    table = result_rows(results)
    write_atomic(out_table, lambda tmp: table.to_csv(tmp, sep="\t", index=False))
    plot_results(table, out_plot)
    for rec in table.itertuples():
        if rec.metric:
            log.info(
                "%s / %s: %s = %.3f ± %.3f (n=%d)",
                rec.target,
                rec.features,
                rec.metric,
                rec.mean,
                rec.std,
                rec.n_subjects,
            )
    return out
