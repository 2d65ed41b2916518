"""A quality signal during pretraining: the k-NN probe of the held-out subjects.

Every ``pretrain.eval_every`` epochs the encoder embeds the held-out evaluation subjects and a
fixed sample of training subjects (the k-NN reference set), each capped at
``pretrain.eval_subjects`` and chosen by the split's stable hash, so the sets neither move when
subjects are added nor grow without bound at 60,000 subjects. Features are the probe's
(``damt.probe``: foreground centred on one grid, brain tokens pooled), and so is the k-NN
(cosine, k by inner cross-validation on the reference set). The ranks share the embedding work;
rank 0 scores it. Like DINO's k-NN monitor (Caron et al. 2021), on phenotypes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from damt.manifest import KEY, held_out, trains
from damt.paths import IMAGE_FILE
from damt.split import unit_hash

log = logging.getLogger("damt.train")

# The metric each target's best checkpoint is chosen by (pretrain.keep_best).
PRIMARY_METRIC = {"regression": "r2", "classification": "balanced_accuracy"}


@dataclass
class EvalSet:
    """The subjects one evaluation embeds (held-out ones first) and their phenotypes."""

    subjects: list[str]
    cache_dirs: list[Path]
    n_holdout: int
    targets: dict[str, tuple[str, pd.Series]]  # name -> (kind, value per subject; NaN missing)
    grid: tuple[int, ...]


def capped(ids: Sequence[str], cap: int) -> list[str]:
    """The first ``cap`` of ``ids`` in the order of their stable hash (a sample that only gains
    the newcomers that hash into it when subjects are added)."""
    return sorted(sorted(ids, key=unit_hash)[:cap])


def build_eval_set(
    manifest: str | Path,
    phenotypes: str | Path | None,
    targets: Sequence[Mapping],
    cap: int,
    stride: int,
) -> EvalSet | None:
    """The evaluation's subjects and targets, or None (logged why) when there is nothing to
    score: no phenotype table, no held-out subjects, or no target with values on both sides."""
    from damt.probe.features import cohort_grid
    from damt.probe.phenotypes import read_phenotypes

    if not phenotypes:
        log.info("evaluation during pretraining is off: no phenotype table (probe.phenotypes)")
        return None
    frame = pd.read_parquet(manifest)
    base = Path(manifest).parent
    usable = frame[trains(frame) | held_out(frame)]
    held = frame[held_out(frame)]
    if held.empty:
        log.info("evaluation during pretraining is off: the manifest holds no held-out subject")
        return None
    try:
        pheno = read_phenotypes(phenotypes, frame[KEY].astype(str).tolist())
        pheno = pheno.drop_duplicates(KEY, keep=False).set_index(KEY)
    except (OSError, ValueError) as exc:
        # An evaluation is a signal, not the training: a bad table never stops the run.
        log.warning("evaluation during pretraining is off: cannot read %s (%s)", phenotypes, exc)
        return None
    labelled = set(pheno.index)
    held_ids = capped([s for s in held[KEY].astype(str) if s in labelled], cap)
    train_ids = capped([s for s in frame.loc[trains(frame), KEY].astype(str) if s in labelled], cap)
    subjects = held_ids + train_ids
    chosen: dict[str, tuple[str, pd.Series]] = {}
    for target in targets:
        name, kind = target["name"], target["type"]
        if name not in pheno.columns:
            log.info("evaluation: the phenotype table has no column %r; target skipped", name)
            continue
        values = pheno[name].reindex(subjects)
        values = pd.to_numeric(values, errors="coerce") if kind == "regression" else values
        if values[held_ids].notna().sum() < 2 or values[train_ids].notna().sum() < 4:
            log.info("evaluation: too few %s values on the held-out or reference side", name)
            continue
        chosen[name] = (kind, values)
    if not chosen:
        log.info("evaluation during pretraining is off: no target has values on both sides")
        return None
    dirs = dict(zip(usable[KEY].astype(str), usable["cache_dir"], strict=True))
    cache_dirs = [base / dirs[s] for s in subjects]
    grid = cohort_grid(dict(zip(subjects, cache_dirs, strict=True)), stride)
    log.info(
        "held-out evaluation: k-NN of %d held-out subjects against %d training subjects "
        "(targets %s)",
        len(held_ids), len(train_ids), ", ".join(chosen),
    )  # fmt: skip
    return EvalSet(subjects, cache_dirs, len(held_ids), chosen, grid)


@torch.no_grad()
def embed(encoder: torch.nn.Module, eval_set: EvalSet, rank: int, world_size: int) -> np.ndarray:
    """Pooled features of every subject of ``eval_set`` (rows in its order), each rank
    embedding every ``world_size``-th subject; all ranks get the whole matrix."""
    from damt.model import pooled_features
    from damt.probe.features import centred

    was_training = encoder.training
    encoder.eval()
    mine = range(rank, len(eval_set.subjects), world_size)
    rows = {}
    for i in mine:
        image = np.load(eval_set.cache_dirs[i] / IMAGE_FILE, mmap_mode="r")
        x = torch.from_numpy(centred(image, eval_set.grid))
        rows[i] = pooled_features(encoder, x)[0].float().cpu().numpy()
    encoder.train(was_training)
    if world_size > 1:
        import torch.distributed as dist

        parts: list[dict] = [{} for _ in range(world_size)]
        dist.all_gather_object(parts, rows)
        rows = {i: row for part in parts for i, row in part.items()}
    return np.stack([rows[i] for i in range(len(eval_set.subjects))])


def knn_scores(features: np.ndarray, eval_set: EvalSet, seed: int) -> dict[str, float]:
    """``eval/{target}/{metric}``: the k-NN probe fitted on the reference subjects and scored on
    the held-out ones (metrics as in ``probe.tsv``)."""
    from damt.probe.estimators import fit_predict
    from damt.probe.metrics import scores
    from damt.probe.settings import KNN

    out: dict[str, float] = {}
    n = eval_set.n_holdout
    for name, (kind, values) in eval_set.targets.items():
        known = values.notna().to_numpy()
        test = np.flatnonzero(known[:n])
        ref = n + np.flatnonzero(known[n:])
        y = values.to_numpy()
        if kind == "regression":
            y, classes = y.astype(float), None
        else:
            y = y.astype(str)
            classes = np.unique(y[ref])
            test = test[np.isin(y[test], classes)]
        try:
            fit = fit_predict(
                KNN, kind, features[ref], y[ref], features[test], classes, 5, seed, name
            )
        except ValueError as exc:  # ProbeError: too few subjects or classes for the inner CV
            log.info("evaluation: %s skipped (%s)", name, exc)
            continue
        for metric, value in scores(
            kind, y[test], fit, classes, np.arange(len(test))[None]
        ).items():
            out[f"eval/{name}/{metric}"] = float(value[0])
        out[f"eval/{name}/k"] = fit.chosen
    return out


def evaluate(
    encoder: torch.nn.Module, eval_set: EvalSet, rank: int, world_size: int, seed: int
) -> dict[str, float]:
    """One evaluation: embed on every rank, score on all (cheap), with its time in seconds."""
    start = time.perf_counter()
    features = embed(encoder, eval_set, rank, world_size)
    record = knn_scores(features, eval_set, seed)
    record["eval/seconds"] = time.perf_counter() - start
    return record


def primary(record: Mapping[str, float], eval_set: EvalSet) -> tuple[str, float] | None:
    """The score ``pretrain.keep_best`` compares: the first target's R² or balanced accuracy."""
    for name, (kind, _) in eval_set.targets.items():
        key = f"eval/{name}/{PRIMARY_METRIC[kind]}"
        if key in record and np.isfinite(record[key]):
            return key, record[key]
    return None
