"""The fine-tuning report figure: each task's leading metric against labelled subjects,
pretrained and from scratch, with bootstrap 95 % intervals."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from damt.finetune.settings import MEAN_DICE, PRETRAINED, SCRATCH, SEGMENTATION
from damt.finetune.summary import MORPHOMETRY_PROBE
from damt.io import save_figure
from damt.probe.figures import CHANCE
from damt.probe.settings import CLASSIFICATION, REGRESSION

INIT_COLOURS = {PRETRAINED: "tab:blue", SCRATCH: "tab:gray"}
# The metric each task kind's panel shows.
LEADING = {REGRESSION: "mae", CLASSIFICATION: "auc", SEGMENTATION: MEAN_DICE}


def plot_label_curves(
    summary: pd.DataFrame, kinds: Mapping[str, str], note: str, path: str | Path
) -> None:
    """One panel per task: its leading metric (MAE, ROC AUC, mean Dice) against the labelled
    training subjects, one line per initialisation, its held-out count in the title; ``note``
    under the figure's title (what the held-out subjects can measure)."""
    import matplotlib.pyplot as plt

    tasks = [t for t in kinds if t in set(summary["task"])]
    n = max(len(tasks), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        metric = LEADING[kinds[task]]
        sub = summary[(summary["task"] == task) & (summary["metric"] == metric)]
        for init, colour in INIT_COLOURS.items():
            line = sub[sub["init"] == init].sort_values("n_labelled")
            if line.empty:
                continue
            err = np.vstack([line["mean"] - line["ci_low"], line["ci_high"] - line["mean"]])
            ax.errorbar(
                line["n_labelled"], line["mean"], yerr=np.clip(np.nan_to_num(err), 0, None),
                marker="o", capsize=3, color=colour, label=init,
            )  # fmt: skip
        for ref in sub[sub["init"] == MORPHOMETRY_PROBE].itertuples():
            ax.axhline(ref.mean, color="tab:green", lw=1, ls="-.", label="morphometry probe")
            ax.axhspan(ref.ci_low, ref.ci_high, color="tab:green", alpha=0.1)
        if metric in CHANCE:
            ax.axhline(CHANCE[metric], color="red", lw=1, ls="--", label="chance")
        ax.set_xlabel("labelled training subjects")
        ax.set_ylabel(metric)
        ax.set_title(f"{task} (n_test={int(sub['n_test'].max())})", fontsize=9)
        ax.legend(fontsize=7)
    if not tasks:
        axes[0][0].text(0.5, 0.5, "no task could run (see the rule's log)", ha="center")
    fig.suptitle(
        f"Fine-tuning: pretrained vs. from scratch (mean over seeds, 95 % interval)\n{note}",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
