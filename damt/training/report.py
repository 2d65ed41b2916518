"""Pretraining plots for the Snakemake report: per-task losses and learned task weights."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # without a display matplotlib falls back to Agg
from matplotlib.ticker import MaxNLocator

from damt.io import write_atomic
from damt.training.metrics import read_records


def _series(records: list[dict], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for rec in records:
        for key, value in rec.items():
            if key.startswith(prefix) and value is not None:
                xs, ys = out.setdefault(key[len(prefix) :], ([], []))
                xs.append(rec["epoch"] + 1)
                ys.append(float(value))
    return dict(sorted(out.items()))


def plot_training(run_dir: str | Path, curves: str | Path, weights: str | Path) -> int:
    """Write the two figures from ``metrics.jsonl``; return the number of epochs plotted."""
    records = read_records(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: no metrics.jsonl records to plot")
    losses = _series(records, "loss/")
    n = len(losses) + 1
    ncols = min(4, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    total = [(r["epoch"] + 1, r["loss"]) for r in records if r.get("loss") is not None]
    panels = [("total (weighted)", ([e for e, _ in total], [v for _, v in total]))]
    for ax, (name, (xs, ys)) in zip(axes.ravel(), panels + list(losses.items()), strict=False):
        ax.plot(xs, ys, marker="o", ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("Pretraining loss per task (epoch means)")
    fig.tight_layout()
    write_atomic(curves, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)

    task_weights = _series(records, "weight/")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, (xs, ys) in task_weights.items():
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("weight exp(-log variance)")
    ax.set_title("Learned task weights (uncertainty weighting)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    write_atomic(weights, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return len(records)
