"""The summary of an experiment plan: every run's probe scores and training cost in two tables,
its fine-tuning deltas in a third, and the report's figures (ablation bars, data- and
model-scaling curves, training cost).

Inputs are each run's ``probe.tsv`` (``damt.probe``), ``model_card.json``
(``damt.training.export``) and fine-tuning ``summary.tsv`` (``damt.finetune``, when the
workflow fine-tunes), and the plan's *roles*: one row per (run, kind, setting, seed), a run
appearing once per role (``damt.experiments.plan.Run.role_rows``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # without a display matplotlib falls back to Agg
import numpy as np
import pandas as pd

from damt.experiments.plan import ABLATION, DATA, FULL, MODEL, ExperimentError
from damt.io import save_figure, write_bytes_atomic

log = logging.getLogger(__name__)

KEYS = ["target", "features", "method", "metric"]
SUMMARY_COLUMNS = [
    "run", "kind", "setting", "seed", *KEYS, "mean", "ci_low", "ci_high", "delta_to_full",
    "n_train", "n_test", "protocol",
]  # fmt: skip
RUN_COLUMNS = [
    "run", "kind", "setting", "seed", "subjects", "preset", "encoder_parameters", "device",
    "world_size", "epochs", "train_seconds", "samples_per_s", "device_hours",
]  # fmt: skip
PROBE_COLUMNS = {*KEYS, "label_fraction", "mean", "ci_low", "ci_high", "n_train", "n_test"}
# The metric each figure plots per target kind, and the direction that is better.
PRIMARY = {"mae": "lower", "balanced_accuracy": "higher"}
LABELS = {"mae": "MAE", "balanced_accuracy": "balanced accuracy"}


def _probe_rows(run: str, path: str | Path) -> pd.DataFrame:
    """A run's probe rows at its largest label fraction."""
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, ValueError) as exc:
        raise ExperimentError(
            f"experiments run {run!r}: cannot read its probe table {path}: {exc}"
        ) from exc
    missing = PROBE_COLUMNS - set(table.columns)
    if missing:
        raise ExperimentError(
            f"experiments run {run!r}: probe table {path} lacks columns {sorted(missing)}"
        )
    if table.empty:
        log.warning("experiments run %r: probe table %s has no rows (too few subjects?)", run, path)
        return table
    return table[table["label_fraction"] == table["label_fraction"].max()]


def _card(run: str, path: str | Path) -> dict:
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
        pretraining = card["pretraining"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExperimentError(
            f"experiments run {run!r}: cannot read its model card {path}: {exc}"
        ) from exc
    cost = pretraining.get("cost")
    if cost is None:
        log.warning("experiments run %r: model card %s predates pretraining.cost", run, path)
        cost = {}
    return {
        "subjects": card.get("data", {}).get("subjects"),
        "preset": pretraining.get("config", {}).get("preset"),
        "encoder_parameters": cost.get("encoder_parameters"),
        "device": cost.get("device", pretraining.get("device")),
        "world_size": pretraining.get("world_size"),
        "epochs": pretraining.get("epochs"),
        "train_seconds": cost.get("train_seconds"),
        "samples_per_s": cost.get("samples_per_s"),
        "device_hours": cost.get("device_hours"),
    }


def summarize(
    roles: Sequence[Mapping],
    probe_tables: Mapping[str, str | Path],
    model_cards: Mapping[str, str | Path],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The summary table (probe rows per role, with the delta to the same-seed full run) and the
    runs table (training cost per role)."""
    runs = list(dict.fromkeys(r["run"] for r in roles))
    for run in runs:
        for what, files in (("probe table", probe_tables), ("model card", model_cards)):
            if run not in files:
                raise ExperimentError(f"experiments run {run!r}: no {what} given")
    probes = {run: _probe_rows(run, probe_tables[run]) for run in runs}
    cards = {run: _card(run, model_cards[run]) for run in runs}
    role_frame = pd.DataFrame(list(roles), columns=["run", "kind", "setting", "seed"])

    parts = [
        probes[row.run].assign(run=row.run, kind=row.kind, setting=row.setting, seed=row.seed)
        for row in role_frame.itertuples()
        if not probes[row.run].empty
    ]
    if not parts:
        parts = [pd.DataFrame(columns=SUMMARY_COLUMNS)]
    summary = pd.concat(parts, ignore_index=True)
    full = summary[summary["kind"] == FULL].drop_duplicates(["seed", *KEYS])
    reference = full.set_index(["seed", *KEYS])["mean"].rename("full_mean")
    summary = summary.join(reference, on=["seed", *KEYS])
    summary["delta_to_full"] = summary["mean"] - summary["full_mean"]
    summary = summary.reindex(columns=SUMMARY_COLUMNS)

    cost = pd.DataFrame([{"run": run, **cards[run]} for run in runs])
    run_table = role_frame.merge(cost, on="run", how="left").reindex(columns=RUN_COLUMNS)
    return summary, run_table


FINETUNE_COLUMNS = [
    "run", "kind", "setting", "seed", "task", "n_labelled", "metric", "pretrained", "scratch",
    "pretrained_minus_scratch", "ci_low", "ci_high", "delta_to_full",
]  # fmt: skip


def finetune_deltas(
    roles: Sequence[Mapping], finetune_summaries: Mapping[str, str | Path]
) -> pd.DataFrame:
    """Per role, task, labelled count and metric of each run's fine-tuning summary
    (``damt.finetune``): the pretrained and scratch means, their paired difference with its
    interval, and the pretrained mean's delta to the same-seed full run."""
    keys = ["task", "n_labelled", "metric"]
    parts = []
    for role in roles:
        table = pd.read_csv(finetune_summaries[role["run"]], sep="\t")
        wide = table.pivot_table(index=keys, columns="init", values="mean", aggfunc="first")
        diff = table[table["init"] == "pretrained-scratch"].set_index(keys)
        frame = pd.DataFrame(
            {
                "pretrained": wide.get("pretrained"),
                "scratch": wide.get("scratch"),
                "pretrained_minus_scratch": diff["mean"],
                "ci_low": diff["ci_low"],
                "ci_high": diff["ci_high"],
            }
        ).reset_index()
        parts.append(frame.assign(**{k: role[k] for k in ("run", "kind", "setting", "seed")}))
    if not parts:
        return pd.DataFrame(columns=FINETUNE_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    full = out[out["kind"] == FULL].drop_duplicates(["seed", *keys])
    reference = full.set_index(["seed", *keys])["pretrained"].rename("full_pretrained")
    out = out.join(reference, on=["seed", *keys])
    out["delta_to_full"] = out["pretrained"] - out["full_pretrained"]
    return out.reindex(columns=FINETUNE_COLUMNS)


def _primary(summary: pd.DataFrame) -> pd.DataFrame:
    """Pretrained features, linear probe, each target's primary metric."""
    rows = summary[
        (summary["features"] == "pretrained")
        & (summary["method"] == "linear")
        & summary["metric"].isin(list(PRIMARY))
    ]
    return rows


def _save(fig, path: str | Path) -> None:
    save_figure(fig, path, bbox_inches="tight")
    plt.close(fig)


def _panels(targets: Sequence[str], width: float = 4.2, height: float = 3.2):
    fig, axes = plt.subplots(
        1, max(1, len(targets)), figsize=(width * max(1, len(targets)), height), squeeze=False
    )
    return fig, axes[0]


def _need(rows: pd.DataFrame, kind: str) -> None:
    if rows.empty:
        raise ExperimentError(
            f"the {kind} figure was asked for but the summary has no {kind} run with pretrained "
            "linear-probe scores"
        )


def plot_ablation(summary: pd.DataFrame, path: str | Path) -> None:
    """Per target: the delta to the full model of each ablation (mean over seeds, s.d. bars,
    seeds as dots)."""
    rows = _primary(summary)
    rows = rows[(rows["kind"] == ABLATION) & rows["delta_to_full"].notna()]
    _need(rows, ABLATION)
    targets = sorted(rows["target"].unique())
    fig, axes = _panels(targets)
    for ax, target in zip(axes, targets, strict=True):
        sub = rows[rows["target"] == target]
        metric = sub["metric"].iloc[0]
        tasks = sorted(sub["setting"].unique())
        stats = sub.groupby("setting")["delta_to_full"].agg(["mean", "std"]).reindex(tasks)
        x = np.arange(len(tasks))
        ax.bar(x, stats["mean"], yerr=stats["std"].fillna(0), capsize=3, color="tab:blue")
        for i, task in enumerate(tasks):
            values = sub.loc[sub["setting"] == task, "delta_to_full"]
            ax.plot([i] * len(values), values, "k.", ms=4)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, [f"−{t}" for t in tasks], rotation=45, ha="right", fontsize=8)
        worse = "> 0: worse" if PRIMARY[metric] == "lower" else "< 0: worse"
        ax.set_ylabel(f"Δ {LABELS[metric]} vs full ({worse})", fontsize=8)
        ax.set_title(target, fontsize=9)
    _save(fig, path)


def _curve(summary: pd.DataFrame, runs: pd.DataFrame, kind: str, x_column: str, path, xlabel):
    rows = _primary(summary)
    chosen = rows[rows["kind"] == kind]
    _need(chosen, kind)
    points = runs.drop_duplicates("run").set_index("run")[x_column]
    if kind == DATA:  # the full model is the data curve's largest point
        chosen = pd.concat([chosen, rows[rows["kind"] == FULL]])
    chosen = chosen.assign(x=chosen["run"].map(points)).dropna(subset=["x"])
    targets = sorted(chosen["target"].unique())
    fig, axes = _panels(targets)
    for ax, target in zip(axes, targets, strict=True):
        sub = chosen[chosen["target"] == target]
        stats = sub.groupby("x")["mean"].agg(["mean", "std"]).sort_index()
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o",
                    capsize=3, label="pretrained")  # fmt: skip
        for features, style in (("random_init", "s--"), ("morphometry", "^:")):
            ref = summary[
                (summary["features"] == features)
                & (summary["method"] == "linear")
                & (summary["target"] == target)
                & summary["run"].isin(sub["run"])
                & (summary["metric"] == sub["metric"].iloc[0])
            ].drop_duplicates(["run"])
            ref = ref.assign(x=ref["run"].map(points)).groupby("x")["mean"].mean().sort_index()
            if not ref.empty:
                ax.plot(ref.index, ref.to_numpy(), style, ms=4, label=features.replace("_", "-"))
        if kind == MODEL:
            labels = sub.drop_duplicates("x").set_index("x")["setting"]
            for x_value, label in labels.items():
                ax.annotate(label or "full run", (x_value, stats.loc[x_value, "mean"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(f"{LABELS[sub['metric'].iloc[0]]} (linear probe)", fontsize=8)
        ax.set_title(target, fontsize=9)
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_data_scaling(summary: pd.DataFrame, runs: pd.DataFrame, path: str | Path) -> None:
    """Per target: the score against the training subjects (mean ± s.d. over seeds)."""
    _curve(summary, runs, DATA, "subjects", path, "pretraining subjects")


def plot_model_scaling(summary: pd.DataFrame, runs: pd.DataFrame, path: str | Path) -> None:
    """Per target: the score against the encoder's parameters (mean ± s.d. over seeds)."""
    _curve(summary, runs, MODEL, "encoder_parameters", path, "encoder parameters")


def plot_training_cost(runs: pd.DataFrame, path: str | Path) -> None:
    """Per run: device-hours and samples per second."""
    table = runs.drop_duplicates("run").set_index("run")
    if table["device_hours"].isna().all():
        raise ExperimentError("no run's model card has pretraining.cost: nothing to plot")
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.3 * len(table) + 1.5), squeeze=False)
    y = np.arange(len(table))
    devices = sorted(set(table["device"].dropna()))
    unit = "GPU-hours" if devices == ["cuda"] else "device-hours (" + ", ".join(devices) + ")"
    for ax, column, label in (
        (axes[0][0], "device_hours", unit),
        (axes[0][1], "samples_per_s", "samples / s"),
    ):
        ax.barh(y, table[column].fillna(0), color="tab:gray")
        ax.set_yticks(y, table.index, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(label, fontsize=8)
    axes[0][1].set_yticks(y, [""] * len(y))
    _save(fig, path)


def write_summary(
    roles: Sequence[Mapping],
    probe_tables: Mapping[str, str | Path],
    model_cards: Mapping[str, str | Path],
    outputs: Mapping[str, str | Path],
    finetune_summaries: Mapping[str, str | Path] | None = None,
) -> None:
    """Write ``summary`` and ``runs`` (TSV), with ``finetune_summaries`` (per run) the
    ``finetune`` table (:func:`finetune_deltas`), and each figure named in ``outputs``
    (``ablation``, ``data_scaling``, ``model_scaling``, ``training_cost``)."""
    summary, runs = summarize(roles, probe_tables, model_cards)
    write_bytes_atomic(outputs["summary"], summary.to_csv(sep="\t", index=False).encode())
    write_bytes_atomic(outputs["runs"], runs.to_csv(sep="\t", index=False).encode())
    if finetune_summaries:
        deltas = finetune_deltas(roles, finetune_summaries)
        write_bytes_atomic(outputs["finetune"], deltas.to_csv(sep="\t", index=False).encode())
    log.info("summary of %d runs: %d rows", runs["run"].nunique(), len(summary))
    if "ablation" in outputs:
        plot_ablation(summary, outputs["ablation"])
    if "data_scaling" in outputs:
        plot_data_scaling(summary, runs, outputs["data_scaling"])
    if "model_scaling" in outputs:
        plot_model_scaling(summary, runs, outputs["model_scaling"])
    if "training_cost" in outputs:
        plot_training_cost(runs, outputs["training_cost"])
