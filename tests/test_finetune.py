"""Fine-tuning (damt.finetune): subsets, splits, Dice, summaries and bad input as functions; one
job in-process (resume after a kill); the rule through Snakemake on the session's trained run."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
import torch

from damt.config import schema_defaults
from damt.demo.training_set import write_training_set
from damt.finetune import job as finetune_job
from damt.finetune.data import structure_lut, with_every_structure
from damt.finetune.models import ENCODER_STAGES, build_model, parameter_groups
from damt.finetune.plan import inner_split, labelled_order, labelled_subset, task_units
from damt.finetune.settings import (
    ALL,
    PRETRAINED,
    SCRATCH,
    SEGMENTATION,
    FinetuneError,
    FinetuneSettings,
    Task,
)
from damt.finetune.summary import summarise_task
from damt.finetune.train import dice_per_structure
from damt.freesurfer.labels import LabelTable, read_label_table
from damt.manifest import HOLDOUT, KEY
from tests.conftest import NO_FINETUNE, exported_run

IDS = [f"sub-{i:03d}" for i in range(40)]


def settings(**finetune) -> FinetuneSettings:
    return FinetuneSettings.from_config({**schema_defaults("finetune"), **finetune})


def test_each_seeds_subsets_nest_and_keep_their_order_as_subjects_are_added():
    for seed in (1, 2):
        order = labelled_order(IDS[:30], seed)
        # Ten new subjects: the thirty keep their relative order, so each count's subset of the
        # old subjects is a prefix of the old order.
        grown = [s for s in labelled_order(IDS, seed) if s in set(IDS[:30])]
        assert grown == order
        small, large = labelled_subset(IDS[:30], 4, seed), labelled_subset(IDS[:30], 16, seed)
        assert set(small) < set(large) and small == order[:4]
        assert labelled_subset(IDS[:30], ALL, seed) == order
    assert labelled_order(IDS, 1) != labelled_order(IDS, 2)


def test_a_count_above_the_labelled_subjects_is_skipped_with_a_message(caplog):
    task = Task("age", "regression")
    with caplog.at_level(logging.WARNING):
        units = task_units(task, (4, 8, 16, ALL), (1, 2, 3), 10)
    assert "labelled count(s) 16 skipped: the task has 10 labelled training subjects" in caplog.text
    assert sorted({u.count for u in units}, key=str) == [4, 8, ALL]
    assert {(u.init, u.seed) for u in units} == {
        (i, s) for i in (PRETRAINED, SCRATCH) for s in (1, 2, 3)
    }
    # `all` equal to a listed count is that count once.
    assert {u.count for u in task_units(task, (4, 8, ALL), (1,), 8)} == {4, 8}
    with pytest.raises(FinetuneError, match="age: no labelled count fits its 3 labelled"):
        task_units(task, (4, 8), (1,), 3)
    with pytest.raises(FinetuneError, match="20 labelled subjects asked for, 10 there are"):
        labelled_subset(IDS[:10], 20, 0)


def test_the_inner_validation_split_picks_a_share_of_the_units_subjects():
    train, val = inner_split(IDS[:12], 0.2, 5)
    assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == set(IDS[:12])
    assert inner_split(IDS[:12], 0.2, 5) == (train, val)
    # Below 1/fraction subjects nobody validates (the last epoch is kept).
    assert inner_split(IDS[:4], 0.2, 5) == (sorted(IDS[:4]), [])


def test_dice_per_structure_against_a_hand_computed_case():
    target = np.zeros((4, 4, 4), int)
    pred = np.zeros((4, 4, 4), int)
    target[0, 0, :4] = 1  # 4 voxels of structure 1
    pred[0, 0, :2] = 1  # 2 of them found, and 2 false ones
    pred[1, 0, :2] = 1
    target[3, 3, 3] = 2  # structure 2: missed
    pred[2, 2, 2] = 3  # structure 3: only predicted
    dice = dice_per_structure(pred, target, 4)
    # 1: 2·2 / (4 + 4); 2: 0 / 1; 3: 0 / 1; 4: in neither (undefined).
    np.testing.assert_allclose(dice[:3], [0.5, 0.0, 0.0])
    assert np.isnan(dice[3])


def test_a_label_group_with_labels_missing_from_the_table_or_merged_by_it_is_refused():
    table = LabelTable(
        [0, 10, 49, 17, 53], ["bg", "L-Th", "R-Th", "L-Hip", "R-Hip"], [0, 1, 1, 2, 3]
    )
    lut = structure_lut(Task("hip", SEGMENTATION, (17, 53)), table)
    assert lut.tolist() == [0, 0, 1, 2]  # class 2 → 1, class 3 → 2, the rest background
    with pytest.raises(
        FinetuneError, match=r"finetune bad: label\(s\) 99 are not in the cache's label table"
    ):
        structure_lut(Task("bad", SEGMENTATION, (17, 99)), table)
    with pytest.raises(FinetuneError, match=r"thalamus: the label table merges label\(s\) 10, 49"):
        structure_lut(Task("thalamus", SEGMENTATION, (10, 49)), table)


def test_subjects_whose_atlas_lacks_a_structure_are_left_out_by_name(tmp_path, caplog):
    files = write_training_set(tmp_path, n_subjects=3, shape=(24, 24, 24))
    caches = {s: tmp_path / "subjects" / s / "cache" for s in files.subjects}
    atlas = np.load(caches["sub-01"] / "atlas.npy")
    np.save(caches["sub-01"] / "atlas.npy", np.where(atlas == 2, 1, atlas))  # no class 2 left
    task = Task("two", SEGMENTATION, (2, 3))  # classes 1 and 2 of the training set's table
    lut = structure_lut(task, read_label_table(files.label_table))
    with caplog.at_level(logging.WARNING):
        kept = with_every_structure(task, lut, caches, files.subjects)
    assert kept == ["sub-00", "sub-02"]
    assert (
        "finetune two: 1 subject(s) left out, their atlas lacks structures: sub-01 (labels 3)"
        in caplog.text
    )


def test_the_summary_pairs_seeds_and_resamples_for_the_difference():
    rng = np.random.default_rng(0)
    y = rng.normal(50, 10, 30)
    # Pretrained predicts near the truth, scratch predicts the mean: R² about 0.9 against 0.
    results = {}
    for seed in (1, 2, 3):
        near = (y + rng.normal(0, 3, 30)).tolist()
        results[(PRETRAINED, 8, seed)] = {"pred": near, "proba": None, "n_labelled": 8}
        results[(SCRATCH, 8, seed)] = {
            "pred": [float(y.mean())] * 30,
            "proba": None,
            "n_labelled": 8,
        }
    rows = pd.DataFrame(summarise_task("age", "regression", results, y, None, 500, 0))
    r2 = rows[rows["metric"] == "r2"].set_index("init")
    assert r2.loc[PRETRAINED, "mean"] > 0.8 and abs(r2.loc[SCRATCH, "mean"]) < 1e-9
    diff = r2.loc["pretrained-scratch"]
    assert diff["mean"] == pytest.approx(r2.loc[PRETRAINED, "mean"] - r2.loc[SCRATCH, "mean"])
    assert 0 < diff["ci_low"] < diff["mean"] < diff["ci_high"]
    assert (rows["n_seeds"] == 3).all() and (rows["n_test"] == 30).all()


def test_the_pretrained_encoder_learns_slower_by_stage_and_scratch_at_the_full_rate(tmp_path):
    run, encoder = exported_run(tmp_path / "run")
    task = Task("age", "regression")
    conf = settings(lr=1e-3, encoder_lr_factor=0.1, layer_decay=0.5)
    model, enc = build_model(run, task, PRETRAINED, 1, 11, "cpu")
    # The pretrained start is the run's encoder; the head is trained at lr.
    for key, value in encoder.swinViT.state_dict().items():
        assert torch.equal(enc.state_dict()[key], value), key
    groups = parameter_groups(model, enc, PRETRAINED, conf)
    assert [g["lr"] for g in groups] == pytest.approx(
        [1e-3] + [1e-4 * 0.5**k for k in (4, 3, 2, 1, 0)]
    )
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    scratch, scratch_enc = build_model(run, task, SCRATCH, 1, 11, "cpu")
    assert not torch.equal(scratch_enc.patch_embed.proj.weight, enc.patch_embed.proj.weight)
    assert {g["lr"] for g in parameter_groups(scratch, scratch_enc, SCRATCH, conf)} == {1e-3}
    frozen = parameter_groups(model, enc, PRETRAINED, settings(freeze_encoder=True))
    assert len(frozen) == 1 and len(ENCODER_STAGES) == 5
    seg, seg_enc = build_model(run, Task("s", SEGMENTATION, (1, 2)), PRETRAINED, 3, 11, "cpu")
    assert seg.out.conv.conv.out_channels == 3 and seg_enc is seg.swinViT


@pytest.mark.slow
def test_the_segmentation_path_learns_a_fixed_subject(tmp_path):
    """SwinUNETR from scratch on one synthetic subject's two large structures, 12 steps: the
    crops, loss, schedule and sliding-window inference together reach a Dice well above
    chance (a broken label path or inference would not)."""
    from damt.finetune.data import segmentation_pair
    from damt.finetune.train import Split, fit_segmentation

    files = write_training_set(tmp_path / "data", n_subjects=4, shape=(64, 64, 64))
    run, _ = exported_run(tmp_path / "run")
    task = Task("two", SEGMENTATION, (2, 3))
    lut = structure_lut(task, read_label_table(files.label_table))
    cache = tmp_path / "data" / "subjects" / "sub-00" / "cache"
    split = Split(["sub-00"], [], ["sub-00"])

    def dice_after(epochs: int) -> np.ndarray:
        conf = settings(epochs=epochs, lr=1e-2, crop=64, batch_size=1, crops_per_subject=1)
        model, enc = build_model(run, task, SCRATCH, 3, 0, "cpu")
        groups = parameter_groups(model, enc, SCRATCH, conf)
        pair = lambda _: segmentation_pair(cache, lut, 1)  # noqa: E731
        return np.asarray(fit_segmentation(model, groups, conf, pair, 2, split, 0)["dice"][0])

    # Chance: each voxel labelled uniformly at random among the 3 classes.
    share = np.bincount(segmentation_pair(cache, lut, 1)[1].ravel(), minlength=3)[1:] / 64**3
    chance = 2 * (share / 3) / (share + 1 / 3)
    trained = dice_after(12)
    assert trained.mean() > 0.3 and (trained > 2 * chance).all(), (trained, chance)


# ------------------------------------------------------------------------ one job, in-process


def _job_inputs(tmp_path, **finetune):
    """A training set (8 subjects, 3 held out), its phenotypes, an exported tiny run."""
    files = write_training_set(tmp_path / "data", n_subjects=8, shape=(40, 40, 40))
    manifest = pd.read_parquet(files.manifest)
    manifest["split"] = [
        "holdout" if s in ("sub-00", "sub-03", "sub-05") else "train" for s in manifest[KEY]
    ]
    manifest.to_parquet(files.manifest)
    rng = np.random.default_rng(0)
    phenotypes = pd.DataFrame(
        {KEY: manifest[KEY], "age": rng.uniform(20, 80, len(manifest)).round(1),
         "sex": ["F", "M"] * (len(manifest) // 2)}
    )  # fmt: skip
    phenotypes.to_csv(tmp_path / "phenotypes.tsv", sep="\t", index=False)
    run, _ = exported_run(tmp_path / "run")
    config = {
        **schema_defaults("finetune"),
        "targets": [{"name": "age", "type": "regression"}],
        "counts": [2, ALL], "seeds": [11, 12, 13], "epochs": 1, "downsample": 2,
        "bootstrap": 100, "threads": 1, **finetune,
    }  # fmt: skip
    names = (("table", "finetune.tsv"), ("summary", "summary.tsv"), ("plot", "label_curves.png"))
    outputs = {k: tmp_path / "out" / f for k, f in names}
    return config, (
        str(tmp_path / "phenotypes.tsv"),
        ["pass", "warn"],
        files.label_table,
        files.manifest,
        run,
        outputs,
    )


class Killed(BaseException):
    """A stand-in for SIGKILL between two units."""


def test_a_killed_job_redoes_only_its_unfinished_units(tmp_path, monkeypatch):
    config, args = _job_inputs(tmp_path)
    units_dir = args[-1]["table"].parent / "units"
    trained, real = [], finetune_job.run_unit

    def counted(run, unit, *rest, limit=None):
        if limit is not None and len(trained) == limit:
            raise Killed
        trained.append(unit.name)
        return real(run, unit, *rest)

    monkeypatch.setattr(finetune_job, "run_unit", lambda *a: counted(*a, limit=5))
    with pytest.raises(Killed):
        finetune_job.run_finetune(config, *args)
    first = sorted(trained)
    assert len(first) == 5 and sorted(p.stem for p in units_dir.glob("*.json")) == first
    stored = {p.stem: p.read_text() for p in units_dir.glob("*.json")}

    trained.clear()
    monkeypatch.setattr(finetune_job, "run_unit", counted)
    summary = finetune_job.run_finetune(config, *args)
    assert len(trained) == 12 - 5 and not set(trained) & set(first)
    assert {p.stem: p.read_text() for p in units_dir.glob("*.json") if p.stem in stored} == stored
    table = pd.read_csv(args[-1]["table"], sep="\t")
    assert set(table["seed"]) == {11, 12, 13} and set(table["n_labelled"]) == {2, 5}
    assert set(summary["init"]) == {PRETRAINED, SCRATCH, "pretrained-scratch"}

    # A setting that changes what a unit learns redoes every unit; the bootstrap does not.
    trained.clear()
    finetune_job.run_finetune({**config, "bootstrap": 200}, *args)
    assert trained == []
    finetune_job.run_finetune({**config, "epochs": 2}, *args)
    assert len(trained) == 12

    # A training subject gone: only the units whose subset held it (and every `all`) train again.
    before = ["sub-01", "sub-02", "sub-04", "sub-06", "sub-07"]
    manifest = pd.read_parquet(args[3])
    manifest.loc[manifest[KEY] == "sub-07", "status"] = "fail"
    manifest.to_parquet(args[3])
    trained.clear()
    finetune_job.run_finetune({**config, "epochs": 2}, *args)
    changed = [s for s in (11, 12, 13) if "sub-07" in labelled_subset(before, 2, s)]
    expected = {f"age-{i}-n{c}-s{s}" for i in (PRETRAINED, SCRATCH)
                for c, seeds in ((2, changed), (ALL, (11, 12, 13))) for s in seeds}  # fmt: skip
    assert 0 < len(changed) < 3 and sorted(trained) == sorted(expected)


@pytest.mark.slow
def test_bad_tasks_are_named_and_the_others_still_run(tmp_path, caplog):
    """A missing column, a count above the labelled subjects and a one-class subset are named;
    every other unit runs, segmentation included (its Dice per structure in the table)."""
    config, args = _job_inputs(
        tmp_path,
        targets=[{"name": "age", "type": "regression"},
                 {"name": "handedness", "type": "classification"},
                 {"name": "sex", "type": "classification"}],
        segmentation={"enabled": True, "name": "two", "labels": [2, 3]},
        counts=[3, 40], crop=64, crops_per_subject=1, downsample=1,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        finetune_job.run_finetune(config, *args)
    text = caplog.text
    assert "finetune handedness: the phenotype table has no column 'handedness'" in text
    assert (
        "finetune age: labelled count(s) 40 skipped: the task has 5 labelled training subjects"
        in text
    )
    table = pd.read_csv(args[-1]["table"], sep="\t")
    assert {"age", "two"} <= set(table["task"]) <= {"age", "sex", "two"}
    dice = table[table["task"] == "two"]
    assert len(dice[dice["metric"] == "mean_dice"]) == 2 * 3 and dice["value"].between(0, 1).all()
    assert {"dice:region-1", "dice:region-2"} <= set(dice["metric"])
    held_out = {"sub-00", "sub-03", "sub-05"}
    for path in (args[-1]["table"].parent / "units").glob("*.json"):
        unit = json.loads(path.read_text())
        assert set(unit["subjects"]) == held_out, path.name
        assert not (set(unit["train"]) | set(unit["validation"])) & held_out, path.name
    # A unit whose subset holds one class is named with its subjects; the others of sex ran.
    one_class = [r.getMessage() for r in caplog.records if "hold one class only" in r.getMessage()]
    for message in one_class:
        assert message.startswith("finetune sex-") and "sub-" in message


def test_no_task_that_can_run_is_an_error(tmp_path):
    config, args = _job_inputs(tmp_path, targets=[{"name": "nothing", "type": "regression"}])
    with pytest.raises(
        FinetuneError, match="no task can run: finetune nothing: the phenotype table has no column"
    ):
        finetune_job.run_finetune(config, *args)
    with pytest.raises(
        FinetuneError, match="must be a multiple of the encoder's stride 32, at least 64"
    ):
        finetune_job.run_finetune({**config, "crop": 48}, *args)
    with pytest.raises(FinetuneError, match="holds the pretraining seed"):
        card = json.loads((args[4] / "model_card.json").read_text())
        card["pretraining"] = {"config": {"seed": 11}}
        (args[4] / "model_card.json").write_text(json.dumps(card))
        finetune_job.run_finetune(config, *args)


# ------------------------------------------------------------------------ the rule, for real


@pytest.mark.slow
def test_the_finetune_rule_on_the_trained_run(trained_copy):
    """The rule through Snakemake on the session's trained run: every count, seed and init; no
    held-out subject trains. (Segmentation units run in-process in
    test_bad_tasks_are_named_and_the_others_still_run, and in the demo.)"""
    work = trained_copy.set(
        finetune={
            **NO_FINETUNE,  # the default config's segmentation off
            "targets": [{"name": "age", "type": "regression"}],
            "counts": [2, ALL], "seeds": [11, 12, 13], "epochs": 1, "bootstrap": 100,
            "threads": 2,
        }
    )  # fmt: skip
    out = work.results / "finetune" / "default"
    proc = work.snakemake("--cores", "2", str(out / "summary.tsv"))
    assert "rule finetune" in proc.stderr + proc.stdout
    table = pd.read_csv(out / "finetune.tsv", sep="\t")
    assert set(table["init"]) == {PRETRAINED, SCRATCH} and set(table["seed"]) == {11, 12, 13}
    assert table["n_labelled"].nunique() == 2
    manifest = pd.read_parquet(work.results / "manifest.parquet")
    held_out = set(manifest.loc[manifest["split"] == HOLDOUT, KEY])
    units = [json.loads(p.read_text()) for p in (out / "units").glob("*.json")]
    assert len(units) == 12
    for unit in units:
        assert set(unit["subjects"]) == held_out
        assert not (set(unit["train"]) | set(unit["validation"])) & held_out
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert "pretrained-scratch" in set(summary["init"])
    # Two held-out subjects: the probe fell back to nested cross-validation, another split than
    # the fine-tuning's, so its morphometry scores are no reference here.
    assert "morphometry_probe" not in set(summary["init"])
    assert (out / "label_curves.png").stat().st_size > 10_000
    log = (work.results / "logs" / "finetune" / "default.log").read_text()
    assert "12 unit(s) trained, 0 reused" in log


@pytest.mark.slow
def test_an_experiment_plan_fine_tunes_every_run_into_its_summary(upstream_copy):
    work = upstream_copy.set(
        experiments={"ablation": ["mim"], "seeds": [0]},
        finetune={"targets": [{"name": "age", "type": "regression"}]},
    )
    plan = work.dry_run()
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", plan, re.MULTILINE))
    assert (jobs["pretrain"], jobs["finetune"], jobs["experiments_summary"]) == ("2", "2", "1")
    assert "results/experiments/finetune.tsv" in plan


def test_the_morphometry_probe_is_a_reference_row_of_the_same_split(tmp_path):
    from damt.finetune.summary import MORPHOMETRY_PROBE, morphometry_reference
    from damt.probe.targets import TSV_COLUMNS

    rows = [
        ["age", "morphometry", "linear", 1.0, "mae", 7.0, 6.0, 8.0, 40, 10, "holdout"],
        ["age", "morphometry", "linear", 0.5, "mae", 9.0, 8.0, 10.0, 20, 10, "holdout"],
        ["age", "morphometry", "knn", 1.0, "mae", 8.0, 7.0, 9.0, 40, 10, "holdout"],
        ["age", "pretrained", "linear", 1.0, "mae", 9.5, 8.0, 11.0, 40, 10, "holdout"],
        ["sex", "morphometry", "linear", 1.0, "auc", 0.8, 0.7, 0.9, 40, 10, "holdout"],
    ]
    path = tmp_path / "probe.tsv"
    pd.DataFrame(rows, columns=TSV_COLUMNS).to_csv(path, sep="\t", index=False)
    (ref,) = morphometry_reference(path, {"age": "regression"})
    assert ref["init"] == MORPHOMETRY_PROBE
    assert (ref["metric"], ref["mean"], ref["n_labelled"], ref["n_test"]) == ("mae", 7.0, 40, 10)


def test_a_target_with_one_class_among_the_labelled_training_subjects_is_refused(tmp_path):
    from damt.finetune.job import prepare_task

    train, test = ["a", "b", "c"], ["d", "e"]
    phenotypes = pd.DataFrame({KEY: train + test, "dx": ["CN", "CN", "CN", "AD", "CN"]})
    with pytest.raises(
        FinetuneError,
        match=r"finetune dx: one class \(CN\) among the labelled training subjects a, b, c",
    ):
        prepare_task(Task("dx", "classification"), train, test, {}, phenotypes, "", 32, 1)
    empty = phenotypes.assign(dx=[None] * 5)
    with pytest.raises(FinetuneError, match=r"finetune dx: only one class"):
        prepare_task(Task("dx", "classification"), train, test, {}, empty, "", 32, 1)
