"""Benchmark of one fine-tuning unit (damt.finetune): seconds per unit and per optimiser step
of a phenotype unit and a segmentation unit, on synthetic volumes, and the projected GPU cost of
the schema's protocol for a preset.

    python bench/finetune.py                       # tiny preset on this machine
    python bench/finetune.py --project full        # and the full preset's FLOPs per step

Each unit trains ``--epochs`` epochs on ``--subjects`` labelled subjects (no validation split)
and predicts ``--held-out`` subjects, as the finetune rule does; model building and data loading
are timed with it. ``--project`` counts the FLOPs of one forward and backward pass of the
preset's pooled-head network (one whole volume) and of its SwinUNETR (one crop) with torch's
FLOP counter and turns the schema's protocol (its counts, seeds and epochs, both inits) into
device-hours at an assumed model FLOPs utilisation (``--mfu``) of a peak (``--peak-tflops``):
a projection, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from damt.config import schema_defaults
from damt.demo.training_set import write_training_set
from damt.finetune.job import prepare_task, run_unit
from damt.finetune.models import build_model
from damt.finetune.plan import labelled_subset
from damt.finetune.settings import ALL, PRETRAINED, SEGMENTATION, FinetuneSettings, Task, Unit
from damt.manifest import KEY
from damt.paths import MODEL_CARD_FILE
from damt.training.export import export_random_run


def _data(root: Path, n: int, held_out: int, size: int):
    files = write_training_set(root / "data", n_subjects=n + held_out, shape=(size,) * 3)
    manifest = pd.read_parquet(files.manifest)
    test = set(files.subjects[:held_out])
    manifest["split"] = ["holdout" if s in test else "train" for s in manifest[KEY]]
    manifest.to_parquet(files.manifest)
    ages = np.random.default_rng(0).uniform(20, 80, len(manifest))
    phenotypes = pd.DataFrame({KEY: manifest[KEY], "age": ages})
    train = [s for s in files.subjects if s not in test]
    caches = {s: root / "data" / "subjects" / s / "cache" for s in files.subjects}
    return files, phenotypes, train, sorted(test), caches


def time_units(preset: str, args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files, phenotypes, train, test, caches = _data(
            root, args.subjects, args.held_out, args.size
        )
        run = root / "run"
        export_random_run(run, preset)
        stride = json.loads((run / MODEL_CARD_FILE).read_text())["architecture"]["stride"]
        conf = {**schema_defaults("finetune"), "epochs": args.epochs, "crop": args.crop,
                "downsample": 1, "threads": args.threads, "validation_fraction": 0.01}  # fmt: skip
        settings = FinetuneSettings.from_config(conf)
        torch.set_num_threads(args.threads)
        for task in (Task("age", "regression"), Task("seg", SEGMENTATION, (2, 3))):
            prep = prepare_task(task, train, test, caches, phenotypes, files.label_table, stride, 1)
            samples = len(train) * (settings.crops_per_subject if task.kind == SEGMENTATION else 1)
            per_epoch = math.ceil(samples / settings.batch_size)
            start = time.perf_counter()
            unit = Unit(task.name, PRETRAINED, ALL, 1)
            subset = labelled_subset(prep.train, ALL, 1)
            run_unit(run, unit, prep, subset, settings, "cpu")
            seconds = time.perf_counter() - start
            steps = per_epoch * args.epochs
            print(
                f"{preset} {task.kind}: {seconds:.1f} s per unit ({steps} steps of batch "
                f"{settings.batch_size}, {len(test)} held-out predictions): "
                f"{seconds / steps:.2f} s per step"
            )


def _flops(model, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    return float(counter.get_total_flops())


def project(preset: str, args) -> None:
    """FLOPs per step of both networks of ``preset`` and the protocol's device-hours."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        export_random_run(run, preset)
        pheno, _ = build_model(run, Task("age", "regression"), PRETRAINED, 1, 0, "cpu")
        seg, _ = build_model(
            run, Task("seg", SEGMENTATION, tuple(range(1, 15))), PRETRAINED, 15, 0, "cpu"
        )
        per_pheno = _flops(pheno, torch.rand(1, 1, *(args.volume,) * 3)) * 2  # batch of 2
        per_seg = _flops(seg, torch.rand(2, 1, *(args.crop,) * 3))
    defaults = schema_defaults("finetune")
    counts = [c if c != "all" else args.cohort for c in defaults["counts"]]
    units = len(defaults["seeds"]) * 2  # seeds x inits per count
    steps_pheno = sum(math.ceil(c / 2) for c in counts) * defaults["epochs"] * units
    steps_seg = (
        sum(math.ceil(c * defaults["crops_per_subject"] / 2) for c in counts)
        * defaults["epochs"]
        * units
    )
    print(
        f"{preset}: {per_pheno / 1e12:.2f} TFLOP per phenotype step ({args.volume}³, batch 2), "
        f"{per_seg / 1e12:.2f} TFLOP per segmentation step ({args.crop}³ crops, batch 2)"
    )
    for mfu in args.mfu:
        rate = args.peak_tflops * 1e12 * mfu
        hours = (steps_pheno * per_pheno + steps_seg * per_seg) / rate / 3600
        print(
            f"  schema protocol on {args.cohort} labelled subjects (counts {defaults['counts']}, "
            f"{len(defaults['seeds'])} seeds, {defaults['epochs']} epochs, both inits; validation "
            f"and inference not counted): {hours:.2f} device-hours per run and "
            f"phenotype+segmentation task pair at {mfu:.0%} of {args.peak_tflops:g} TFLOP/s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--subjects", type=int, default=8, help="labelled training subjects")
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="side of the synthetic volumes")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--project", help="a preset whose FLOPs and GPU cost to project")
    ap.add_argument("--volume", type=int, default=160, help="phenotype volume side for --project")
    ap.add_argument("--cohort", type=int, default=200, help="labelled subjects for --project")
    ap.add_argument("--peak-tflops", type=float, default=989.4, help="H100 dense bf16")
    ap.add_argument("--mfu", type=float, nargs="+", default=[0.1, 0.3])
    args = ap.parse_args()
    time_units(args.preset, args)
    if args.project:
        project(args.project, args)


if __name__ == "__main__":
    main()
