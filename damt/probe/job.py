"""The workflow's probe job: frozen pretrained encoder vs. random-init encoders vs. morphometry."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from damt.io import write_atomic, write_json_atomic
from damt.manifest import HOLDOUT, KEY, TRAIN
from damt.probe.features import cohort_grid, encoder_features
from damt.probe.figures import plot_embedding, plot_label_efficiency, plot_results
from damt.probe.phenotypes import read_phenotypes
from damt.probe.settings import ProbeError, ProbeSettings, Target
from damt.probe.targets import probe_all, result_rows

log = logging.getLogger(__name__)


def probed_subjects(
    manifest: str | Path, probe: Mapping
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Path], pd.Series]:
    """The phenotype table (its ids matched to the manifest's), the manifest rows probed (a
    status in ``probe.statuses``, a cache, a phenotype row), their cache folders, and their split
    side (all ``train`` for a manifest without a split)."""
    frame = pd.read_parquet(manifest)
    phenotypes = read_phenotypes(probe["phenotypes"], frame[KEY].astype(str).tolist())
    chosen = frame[frame["status"].isin(probe["statuses"]) & frame["has_cache"]]
    chosen = chosen[chosen[KEY].isin(set(phenotypes[KEY]))].sort_values(KEY)
    base = Path(manifest).parent
    cache_dirs = {r.subject_id: base / r.cache_dir for r in chosen.itertuples()}
    split = pd.Series(
        chosen["split"].to_numpy() if "split" in chosen else TRAIN, index=chosen[KEY].tolist()
    )
    log.info(
        "probing %d subjects with phenotypes (statuses %s): %d train, %d held out",
        len(chosen), "/".join(probe["statuses"]), int((split == TRAIN).sum()),
        int((split == HOLDOUT).sum()),
    )  # fmt: skip
    return phenotypes, chosen, cache_dirs, split


def feature_sets(
    encoder_path: str | Path,
    cache_dirs: Mapping[str, Path],
    random_init_seeds: Sequence[int],
    morphometry_tables: Sequence[str | Path],
) -> tuple[dict[str, list[pd.DataFrame]], tuple[int, ...]]:
    """The ``pretrained``, ``random_init`` (one frame per seed) and ``morphometry`` feature sets,
    and the grid the encoders saw."""
    import torch

    from damt.features.tables import read_table
    from damt.model import build_encoder, encoder_stride, load_encoder, read_encoder_spec

    spec = read_encoder_spec(encoder_path)
    pretrained = load_encoder(encoder_path, spec)
    grid = cohort_grid(cache_dirs, encoder_stride(pretrained))
    log.info("encoding every subject on one %s grid (foreground centred)", "x".join(map(str, grid)))
    randoms = []
    for seed in random_init_seeds:
        torch.manual_seed(seed)
        randoms.append(encoder_features(build_encoder(spec).eval(), cache_dirs, grid))
    morph = None
    for path in morphometry_tables:
        table, _ = read_table(path)
        morph = table if morph is None else morph.merge(table, on=KEY, how="outer")
    sets = {
        "pretrained": [encoder_features(pretrained, cache_dirs, grid)],
        "random_init": randoms,
        "morphometry": [morph],
    }
    return sets, grid


def run_probe(
    probe: Mapping,
    manifest: str | Path,
    encoder_path: str | Path,
    model_card: str | Path,
    morphometry_tables: Sequence[str | Path],
    outputs: Mapping[str, str | Path],
) -> dict:
    """The probe rule: frozen pretrained encoder vs. random-init encoders vs. morphometry.

    ``probe`` is the config's ``probe`` section (the rule's params); ``outputs`` names the files
    ``json``, ``table``, ``plot``, ``label_efficiency`` and ``embedding``.
    """
    settings = ProbeSettings.from_config(probe)
    pretrain_seed = json.loads(Path(model_card).read_text())["pretraining"]["config"]["seed"]
    if pretrain_seed in probe["random_init_seeds"]:
        raise ProbeError(
            f"probe.random_init_seeds holds the pretraining seed {pretrain_seed}: that random "
            "encoder is the pretrained run's own starting point; choose other seeds"
        )
    import torch

    torch.set_num_threads(probe["threads"])
    phenotypes, chosen, cache_dirs, split = probed_subjects(manifest, probe)
    sets, grid = feature_sets(
        encoder_path, cache_dirs, probe["random_init_seeds"], morphometry_tables
    )
    targets = [Target(t["name"], t["type"]) for t in probe["targets"]]
    participants = (
        dict(zip(chosen[KEY], chosen["participant"].astype(str), strict=True))
        if "participant" in chosen
        else None
    )
    results = probe_all(sets, phenotypes, targets, split, settings, participants)
    out = {
        "encoder": str(encoder_path),
        "phenotypes": probe["phenotypes"],
        "statuses": probe["statuses"],
        "grid": list(grid),
        "pretraining_seed": pretrain_seed,
        "random_init_seeds": list(probe["random_init_seeds"]),
        "settings": {k: v for k, v in probe.items() if k not in ("targets", "phenotypes")},
        "feature_sets": {k: int(v[0].shape[1] - 1) for k, v in sets.items()},
        "split": {
            "train": sorted(split.index[split == TRAIN]),
            "holdout": sorted(split.index[split == HOLDOUT]),
        },
        "targets": results,
    }
    write_json_atomic(outputs["json"], out)
    table = result_rows(results)
    write_atomic(outputs["table"], lambda tmp: table.to_csv(tmp, sep="\t", index=False))
    plot_results(table, outputs["plot"])
    plot_label_efficiency(table, {t.name: t.kind for t in targets}, outputs["label_efficiency"])
    plot_embedding(sets["pretrained"][0], phenotypes, targets, settings.seed, outputs["embedding"])
    for rec in table[table["label_fraction"] == 1.0].itertuples():
        log.info(
            "%s / %s / %s: %s = %.3f [%.3f, %.3f] (n_train %d, n_test %d, %s)",
            rec.target, rec.features, rec.method, rec.metric, rec.mean, rec.ci_low,
            rec.ci_high, rec.n_train, rec.n_test, rec.protocol,
        )  # fmt: skip
    return out
