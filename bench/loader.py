"""Training-sample throughput: reading the training cache vs. the original per-sample MONAI chain.

Both datasets are the trainer's ``PretrainDataset`` and draw the same views (two global crops,
a local crop, rotations, MIM masks) with the same random streams; they differ only in where the
volumes come from:

- cache: ``image.npy`` / ``atlas.npy`` read with ``mmap_mode="r"`` (what the trainer does);
- MONAI: each sample loads ``brainmask.mgz`` and ``aparc+aseg.mgz`` and runs the original
  preprocessing chain (reorient, crop foreground, resample to 1.25 mm, pad, percentile
  scaling, label remapping) before cutting views, as the original code did every epoch.

    python bench/loader.py [--subjects 8] [--samples 48] [--workers 2] [--preset full]
    ... last line: cache_speedup=X

With ``--augment``: the cost per sample of each ``pretrain.augment`` transform (probability 1,
the schema's default ranges) on the cached dataset, one process, one thread, and the loader's
rate with all of them on and ``--workers`` workers:

    python bench/loader.py --augment [--samples 12] [--workers 2] [--preset full]
    ... last line: augmented_samples_per_s=X
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.transforms import Rand3DElastic
from torch.utils.data import DataLoader

from damt.config import schema_defaults, validate_config
from damt.demo.cohort import generate_cohort
from damt.freesurfer.labels import read_label_table
from damt.model.spec import view_spec_from_config
from damt.stages.cache import CacheSettings, CacheStage, monai_chain
from damt.stages.store import SubjectTask, run_tasks
from damt.training.data import PretrainDataset, load_training_data
from damt.training.settings import AUGMENTATIONS, AugmentSpec

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work" / "loader"
LABELS = REPO / "config" / "labels" / "freesurfer7_aparc+aseg.tsv"


class MonaiChainDataset(PretrainDataset):
    """The trainer's dataset, with every volume preprocessed from the .mgz files per sample."""

    def __init__(self, data, spec, seed, sources: list[Path], settings: CacheSettings):
        super().__init__(data, spec, seed)
        self.sources = sources
        self.settings = settings
        self.table = read_label_table(LABELS)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from monai import transforms as T

        load = T.Compose(
            [
                T.LoadImaged(keys=["image", "atlas"], reader="NibabelReader", image_only=True),
                T.EnsureChannelFirstd(keys=["image", "atlas"]),
                monai_chain(self.settings),
            ]
        )
        folder = self.sources[index]
        out = load(
            {
                "image": str(folder / "mri" / "brainmask.mgz"),
                "atlas": str(folder / "mri" / "aparc+aseg.mgz"),
            }
        )
        classes, _ = self.table.remap(out["atlas"][0].numpy())
        return out["image"][0].numpy(), classes


def prepare(n_subjects: int, settings: CacheSettings) -> tuple[Path, list[Path]]:
    """Demo subjects and their training cache (reused across runs); returns the manifest."""
    subjects = WORK / f"subjects-{n_subjects}"
    if not (subjects / "phenotypes.tsv").exists():
        generate_cohort(subjects, n_subjects, seed=3)
    sources = sorted(p for p in subjects.iterdir() if p.is_dir())
    results = WORK / "results"
    cache = schema_defaults("cache")
    stage = CacheStage(LABELS, settings, cache["image"], cache["atlas"], cache["fastsurfer"])
    done = run_tasks(stage, [SubjectTask(p.name, p) for p in sources], results)
    rows = [
        {
            "subject_id": r.subject_id,
            "status": "pass",
            "has_cache": True,
            "cache_dir": os.path.relpath(results / "subjects" / r.subject_id / "cache", results),
        }
        for r, _ in done
    ]
    manifest = results / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest, sources


def throughput(dataset, samples: int, workers: int, batch: int) -> tuple[float, float]:
    """(samples/s after the first batch, seconds to the first batch)."""
    order = [i % len(dataset) for i in range(samples)]
    loader = DataLoader(
        dataset, batch_size=batch, sampler=order, num_workers=workers, persistent_workers=False
    )
    start = time.perf_counter()
    first = None
    seen = 0
    for item in loader:
        if first is None:
            first = time.perf_counter()
        else:
            seen += len(item["index"])
    end = time.perf_counter()
    return seen / (end - first), first - start


def seconds_per_sample(dataset: PretrainDataset, samples: int) -> float:
    """Mean seconds to build one item in this process (after one untimed item)."""
    dataset[0]
    start = time.perf_counter()
    for i in range(samples):
        dataset[i % len(dataset)]
    return (time.perf_counter() - start) / samples


def augment_costs(data, spec, pretrain: dict, samples: int, workers: int, batch: int) -> None:
    """Print each augmentation's cost per sample and the all-on loader rate."""

    def dataset(names: tuple[str, ...]) -> PretrainDataset:
        augment = {
            k: {**v, "prob": 1.0 if k in names else 0.0} for k, v in pretrain["augment"].items()
        }
        return PretrainDataset(data, spec, 0, AugmentSpec.from_config(augment))

    base = seconds_per_sample(dataset(()), samples)
    print(f"no augmentation: {base * 1000:8.1f} ms/sample")
    for name in AUGMENTATIONS:
        cost = seconds_per_sample(dataset((name,)), samples) - base
        print(f"{name:15s}: +{cost * 1000:7.1f} ms/sample")
    # For comparison: MONAI's Rand3DElastic (dense field) on a sample's three blocks.
    dense = Rand3DElastic(
        pretrain["augment"]["elastic"]["sigma"], pretrain["augment"]["elastic"]["magnitude"],
        prob=1.0, padding_mode="zeros",
    )  # fmt: skip
    blocks = [torch.rand(1, *(n,) * 3) for n in (spec.global_crop,) * 2 + (spec.local_crop_source,)]
    start = time.perf_counter()
    for _ in range(max(1, samples // 4)):
        for block in blocks:
            dense(block)
    dense_cost = (time.perf_counter() - start) / max(1, samples // 4)
    print(f"{'(MONAI dense)':15s}: +{dense_cost * 1000:7.1f} ms/sample (Rand3DElastic)")
    every = dataset(AUGMENTATIONS)
    cost = seconds_per_sample(every, samples)
    print(f"all four       : {cost * 1000:8.1f} ms/sample (+{(cost - base) * 1000:.1f})")
    rate, _ = throughput(every, max(samples, 2 * workers * batch), workers, batch)
    print(f"augmented_samples_per_s={rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--preset", choices=["tiny", "full"], default="full")
    parser.add_argument("--augment", action="store_true", help="time pretrain.augment instead")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the workers do the work; keep the main process out of the way

    config = validate_config(
        {"subjects": {"dirs": [{"path": "."}]}, "pretrain": {"preset": args.preset}}
    )
    spec = view_spec_from_config(config["pretrain"])
    settings = CacheSettings.from_config(schema_defaults("cache"))
    manifest, sources = prepare(args.subjects, settings)
    data = load_training_data(manifest, LABELS, {})
    print(
        f"views: preset {args.preset}, global crop {spec.global_crop}^3, local "
        f"{spec.local_crop_source}^3 -> {spec.local_crop}^3; batch {args.batch}, "
        f"{args.workers} workers, {args.subjects} subjects"
    )
    if args.augment:
        augment_costs(data, spec, config["pretrain"], args.samples, args.workers, args.batch)
        return
    cached = PretrainDataset(data, spec, seed=0)
    chain = MonaiChainDataset(data, spec, 0, sources, settings)
    # Same views from both sources: the cache holds exactly what the chain computes.
    a, b = cached[0], chain[0]
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith(("atlas", "mask", "rotation"))), (
        "cache and MONAI chain disagree"
    )
    cache_rate, cache_start = throughput(cached, args.samples, args.workers, args.batch)
    chain_rate, chain_start = throughput(chain, max(8, args.samples // 4), args.workers, args.batch)
    print(f"cache:       {cache_rate:7.2f} samples/s (first batch after {cache_start:.1f} s)")
    print(f"MONAI chain: {chain_rate:7.2f} samples/s (first batch after {chain_start:.1f} s)")
    print(f"cache_speedup={cache_rate / chain_rate:.1f}")


if __name__ == "__main__":
    main()
