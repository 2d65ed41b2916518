"""The probe's report figures: scores with intervals, label efficiency, a t-SNE embedding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from damt.io import save_figure
from damt.manifest import KEY
from damt.probe.estimators import standardise
from damt.probe.settings import CLASSIFICATION, LINEAR, REGRESSION, Target

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
