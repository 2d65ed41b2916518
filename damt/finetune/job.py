"""The workflow's finetune job: every unit (task × init × labelled count × seed) of one run,
each trained on the evaluation split's training subjects and scored on its held-out ones, then
the tables and the figure.

A unit's result is written to ``units/<unit>.json`` as soon as it is done, keyed by what it was
computed from (settings, encoder, subjects): a killed job redoes only the units it had not
finished, and a changed setting redoes those it changes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from damt.downstream import read_card
from damt.finetune.data import (
    PhenotypeVolumes,
    segmentation_pair,
    split_subjects,
    structure_lut,
    structure_names,
    with_every_structure,
)
from damt.finetune.figures import plot_label_curves
from damt.finetune.models import build_model, freeze, parameter_groups
from damt.finetune.plan import inner_split, labelled_subset, task_units
from damt.finetune.settings import (
    SEGMENTATION,
    FinetuneError,
    FinetuneSettings,
    Task,
    Unit,
)
from damt.finetune.summary import (
    ROW_COLUMNS,
    morphometry_reference,
    summarise_task,
    summary_frame,
    unit_rows,
)
from damt.finetune.train import Split, fit_phenotype, fit_segmentation
from damt.freesurfer.labels import read_label_table
from damt.io import sha256_file, stable_hash, write_atomic, write_json_atomic
from damt.probe.phenotypes import read_phenotypes, target_values
from damt.probe.settings import CLASSIFICATION, ProbeError, Target, listed

log = logging.getLogger(__name__)


class Prepared:
    """A task ready to run: its labelled training subjects, its held-out ones, their cache
    folders, and their values and volumes (phenotypes) or structures (segmentation)."""

    def __init__(
        self, task: Task, train: list[str], test: list[str], caches, values=None, lut=None, names=()
    ):
        self.task, self.train, self.test, self.caches = task, train, test, caches
        self.values, self.lut, self.names = values, lut, list(names)
        self.classes = sorted(set(values[train])) if task.kind == CLASSIFICATION else None
        self.volumes = None


def prepare_task(
    task: Task,
    train: list[str],
    test: list[str],
    caches: Mapping[str, Path],
    phenotypes: pd.DataFrame | None,
    label_table: str | Path,
    stride: int,
    downsample: int,
) -> Prepared:
    """The task's labelled subjects, checked: a task that cannot run raises
    :class:`FinetuneError` naming why (the job goes on with the others)."""
    if task.kind == SEGMENTATION:
        table = read_label_table(label_table)
        lut = structure_lut(task, table)
        prepared = Prepared(
            task, with_every_structure(task, lut, caches, train),
            with_every_structure(task, lut, caches, test), caches, lut=lut,
            names=structure_names(task, table),
        )  # fmt: skip
    else:
        if phenotypes is None:
            raise FinetuneError(f"finetune {task.name}: probe.phenotypes is null: no labels")
        try:
            values = target_values(phenotypes, Target(task.name, task.kind), [*train, *test])
        except ProbeError as exc:
            raise FinetuneError(f"finetune {exc}") from exc
        prepared = Prepared(
            task, [s for s in train if s in values.index], [s for s in test if s in values.index],
            caches, values=values,
        )  # fmt: skip
        if task.kind == CLASSIFICATION and len(prepared.classes) < 2:
            raise FinetuneError(
                f"finetune {task.name}: one class ({listed(prepared.classes)}) among the "
                f"labelled training subjects {listed(prepared.train)}; nothing to classify"
            )
    if not prepared.train or not prepared.test:
        raise FinetuneError(
            f"finetune {task.name}: {len(prepared.train)} labelled training and "
            f"{len(prepared.test)} labelled held-out subjects; it needs both"
        )
    if task.kind != SEGMENTATION:
        prepared.volumes = PhenotypeVolumes(
            caches, [*prepared.train, *prepared.test], stride, downsample
        )
    return prepared


def run_unit(
    run: Path,
    unit: Unit,
    prep: Prepared,
    subset: list[str],
    settings: FinetuneSettings,
    device: str,
) -> dict:
    """Train one unit on its labelled ``subset``; its held-out result."""
    train, validation = inner_split(subset, settings.validation_fraction, unit.seed)
    split = Split(train, validation, prep.test)
    task = prep.task
    if task.kind == CLASSIFICATION and len(set(prep.values[train])) < 2:
        raise FinetuneError(
            f"finetune {unit.name}: its training subjects {listed(train)} hold one class only"
        )
    n_out = {SEGMENTATION: len(task.labels) + 1, CLASSIFICATION: len(prep.classes or ())}.get(
        task.kind, 1
    )
    model, encoder = build_model(run, task, unit.init, n_out, unit.seed, device)
    if settings.freeze_encoder:
        freeze(encoder)
    groups = parameter_groups(model, encoder, unit.init, settings)
    if task.kind == SEGMENTATION:
        caches = prep.caches

        def pair(sid):
            return segmentation_pair(caches[sid], prep.lut, settings.downsample)

        fitted = fit_segmentation(model, groups, settings, pair, len(task.labels), split, unit.seed)
    else:
        fitted = fit_phenotype(
            model, groups, settings, prep.volumes, prep.values, task.kind, prep.classes or (),
            split, unit.seed,
        )  # fmt: skip
    return {
        **fitted,
        "subjects": prep.test,
        "n_labelled": len(subset),
        "train": train,
        "validation": validation,
    }


def run_finetune(
    finetune: Mapping,
    phenotypes: str | None,
    statuses: Sequence[str],
    label_table: str | Path,
    manifest: str | Path,
    run: str | Path,
    outputs: Mapping[str, str | Path],
    probe_table: str | Path | None = None,
) -> pd.DataFrame:
    """The finetune rule: every unit of the config's ``finetune`` section for the run folder
    ``run``, on the subjects of the probe's ``phenotypes`` table and ``statuses``;
    ``outputs`` names ``table``, ``summary`` and ``plot`` (the units go beside them). The run's
    ``probe_table`` adds the morphometry probe's scores for reference. Its summary."""
    import torch

    settings = FinetuneSettings.from_config(finetune)
    card, run = read_card(run)
    # A card exported outside a run (damt.training.export) records no pretraining.
    pretrain_seed = card.get("pretraining", {}).get("config", {}).get("seed")
    if pretrain_seed in settings.seeds:
        raise FinetuneError(
            f"finetune.seeds holds the pretraining seed {pretrain_seed}: that scratch network "
            "is the pretrained run's own start; choose other seeds"
        )
    if settings.gpus and not torch.cuda.is_available():
        raise FinetuneError(f"finetune.gpus is {settings.gpus} but torch sees no CUDA device")
    device = "cuda" if settings.gpus else "cpu"
    torch.set_num_threads(settings.threads)
    stride = card["architecture"]["stride"]
    # SwinUNETR's deepest block normalises per instance: it needs more than one token there.
    if settings.crop % stride or settings.crop < 2 * stride:
        raise FinetuneError(
            f"finetune.crop {settings.crop} must be a multiple of the encoder's stride {stride}, "
            f"at least {2 * stride}"
        )

    train, test, caches = split_subjects(manifest, statuses)
    log.info(
        "fine-tuning on the evaluation split: %d training and %d held-out subjects",
        len(train),
        len(test),
    )
    table = read_phenotypes(phenotypes, [*train, *test]) if phenotypes else None
    prepared, units, errors = {}, [], {}
    for task in settings.tasks:
        try:
            prep = prepare_task(
                task, train, test, caches, table, label_table, stride, settings.downsample
            )
            units += task_units(task, settings.counts, settings.seeds, len(prep.train))
        except FinetuneError as exc:
            log.warning("%s", exc)
            errors[task.name] = str(exc)
            continue
        prepared[task.name] = prep
    if not units:
        raise FinetuneError("finetune: no task can run: " + "; ".join(errors.values()))

    folder = Path(outputs["table"]).parent / "units"
    folder.mkdir(parents=True, exist_ok=True)
    weights = sha256_file(run / card["weights"])
    results: dict[Unit, dict] = {}
    reused = 0
    progress = tqdm(units, desc="finetune units", unit="unit", mininterval=10)
    for unit in progress:
        prep = prepared[unit.task]
        # What the unit learns from: a new subject outside its subset leaves it as it was.
        subset = labelled_subset(prep.train, unit.count, unit.seed)
        key = stable_hash([settings.training_fields(), prep.task, unit, weights, subset, prep.test])
        path = folder / f"{unit.name}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                results[unit] = stored
                reused += 1
                continue
        progress.set_postfix_str(unit.name, refresh=False)
        start = time.monotonic()
        try:
            result = run_unit(run, unit, prep, subset, settings, device)
        except FinetuneError as exc:
            log.warning("%s", exc)
            continue
        result = {**result, "key": key, "seconds": round(time.monotonic() - start, 2)}
        write_json_atomic(path, result)
        results[unit] = result
    log.info("%d unit(s) trained, %d reused from %s", len(results) - reused, reused, folder)
    return _write_outputs(settings, prepared, results, errors, outputs, probe_table)


def _write_outputs(settings, prepared, results, errors, outputs, probe_table) -> pd.DataFrame:
    rows, summary = [], []
    for name, prep in prepared.items():
        kind = prep.task.kind
        y = (
            np.asarray(prep.values[prep.test])
            if prep.values is not None
            else np.zeros(len(prep.test))
        )
        if kind == CLASSIFICATION:
            y = y.astype(str)
        done = {u: r for u, r in results.items() if u.task == name}
        for unit, result in done.items():
            rows += unit_rows(unit, kind, result, y, prep.classes, prep.names)
        if done:
            by_key = {(u.init, u.count, u.seed): r for u, r in done.items()}
            summary += summarise_task(name, kind, by_key, y, prep.classes, settings.bootstrap, 0)
    if probe_table:
        kinds = {n: p.task.kind for n, p in prepared.items()}
        summary += morphometry_reference(
            probe_table, {n: k for n, k in kinds.items() if k != SEGMENTATION}
        )
    table = pd.DataFrame(rows, columns=ROW_COLUMNS)
    frame = summary_frame(summary)
    write_atomic(outputs["table"], lambda tmp: table.to_csv(tmp, sep="\t", index=False))
    write_atomic(outputs["summary"], lambda tmp: frame.to_csv(tmp, sep="\t", index=False))
    n_test = max((len(p.test) for p in prepared.values()), default=0)
    note = f"at most {n_test} held-out subjects"
    if n_test < 20:
        note += ": too few to measure a difference (the intervals say so)"
    if errors:
        note += f"; not run: {', '.join(errors)}"
    plot_label_curves(frame, {n: p.task.kind for n, p in prepared.items()}, note, outputs["plot"])
    for rec in frame.itertuples():
        log.info(
            "%s / %s / n=%s: %s = %.3f [%.3f, %.3f] (%d seeds, %d held out)",
            rec.task, rec.init, rec.n_labelled, rec.metric, rec.mean, rec.ci_low, rec.ci_high,
            rec.n_seeds, rec.n_test,
        )  # fmt: skip
    return frame
