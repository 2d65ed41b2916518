"""Pretraining plots for the Snakemake report: per-task losses and learning signals, and the
task weights.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # without a display matplotlib falls back to Agg
from matplotlib.ticker import MaxNLocator

from damt.io import save_figure
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


def _panel(ax, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)


def plot_training(run_dir: str | Path, curves: str | Path, weights: str | Path) -> int:
    """Write the two figures from ``metrics.jsonl``; return the number of epochs plotted.

    ``curves``: the total and per-task losses, then a row of per-task learning signals, each
    with its chance level dashed (``damt.training.signals``) and, where ``pretrain.eval_every``
    scored them, the same signal on the held-out subjects' views with its chance level dotted
    (``damt.training.heldout``), then the held-out k-NN scores. ``weights``: the task weights.
    """
    records = read_records(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: no metrics.jsonl records to plot")
    losses = _series(records, "loss/")
    total = [(r["epoch"] + 1, r["loss"]) for r in records if r.get("loss") is not None]
    loss_panels = [("total (weighted)", ([e for e, _ in total], [v for _, v in total]))]
    loss_panels += list(losses.items())
    signals = _series(records, "signal/")
    chances = _series(records, "chance/")
    held_out = _series(records, "eval_signal/")
    held_out_chances = _series(records, "eval_chance/")
    # The held-out k-NN scores (pretrain.eval_every), one panel per target and metric.
    evals = {k: v for k, v in _series(records, "eval/").items() if k != "seconds"}
    ncols = min(4, max(len(loss_panels), len(signals), len(evals), 1))
    loss_rows = (len(loss_panels) + ncols - 1) // ncols
    signal_rows = (len(signals) + ncols - 1) // ncols
    eval_rows = (len(evals) + ncols - 1) // ncols
    nrows = loss_rows + signal_rows + eval_rows
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, (xs, ys)) in zip(axes[:loss_rows].ravel(), loss_panels, strict=False):
        ax.axis("on")
        ax.plot(xs, ys, marker="o", ms=3)
        _panel(ax, f"loss: {name}")
    signal_axes = axes[loss_rows : loss_rows + signal_rows].ravel()
    for ax, (name, (xs, ys)) in zip(signal_axes, signals.items(), strict=False):
        ax.axis("on")
        ax.plot(xs, ys, marker="o", ms=3, label="training batches")
        if name in chances:
            ax.plot(*chances[name], ls="--", color="grey", label="chance")
        if name in held_out:
            ax.plot(*held_out[name], marker="s", ms=4, color="tab:purple", label="held-out views")
        if name in held_out_chances:
            ax.plot(*held_out_chances[name], ls=":", color="tab:purple", label="held-out chance")
        _panel(ax, name.replace("_", " "))
        ax.legend(fontsize=6)
    for ax, (name, (xs, ys)) in zip(
        axes[loss_rows + signal_rows :].ravel(), evals.items(), strict=False
    ):
        ax.axis("on")
        ax.plot(xs, ys, marker="s", ms=4, color="tab:purple")
        _panel(ax, f"held-out k-NN: {name.replace('/', ' ')}")
    fig.suptitle(
        "Pretraining per task: losses, learning signals against chance (training batches' epoch "
        "means; held-out subjects' views), then the held-out k-NN score"
    )
    fig.tight_layout()
    save_figure(fig, curves)
    plt.close(fig)

    task_weights = _series(records, "weight/")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, (xs, ys) in task_weights.items():
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("weight of the task loss")
    ax.set_yscale("log")
    ax.set_title("Task weights in the total loss (pretrain.balancing)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, weights)
    plt.close(fig)
    return len(records)
