"""Reading the manifest, the cache and the tables; missing features are masked, never zeros."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import default_collate

from damt.features import FEATURE_GROUPS
from damt.freesurfer.labels import read_label_table
from damt.model import DAMTNetwork, EncoderSpec, NetworkSpec, ViewSpec
from damt.paths import normalized_table_file
from damt.training.data import (
    PretrainDataset,
    load_training_data,
    read_feature_table,
)
from damt.training.objective import PretrainObjective
from tests.training_data import write_training_set

VIEWS = ViewSpec(global_crop=64, local_crop=64, local_crop_source=40, mim_patch=16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("train"), n_subjects=4)


def _tables(files):
    return {k: files.tables_dir / normalized_table_file(k) for k in FEATURE_GROUPS}


def test_only_pass_and_warn_subjects_with_a_cache_train(files):
    data = load_training_data(files.manifest, files.label_table, _tables(files))
    assert data.subjects == files.subjects
    assert all(d.is_absolute() and (d / "image.npy").exists() for d in data.cache_dirs)
    assert data.n_classes == files.n_classes
    assert data.summary["subjects_by_status"] == {"pass": 3, "warn": 1}


def test_targets_are_aligned_and_missing_values_stay_nan(files):
    data = load_training_data(files.manifest, files.label_table, _tables(files))
    assert data.width("morphometry") == 7 + 5 and data.width("radiomics") == 4
    # sub-02 has an all-NaN morphometry row; sub-03 is absent from the radiomics table.
    assert np.isnan(data.targets["morphometry"][2]).all()
    assert np.isnan(data.targets["radiomics"][3]).all()
    glob = pd.read_parquet(files.tables_dir / normalized_table_file("morphometry_global"))
    row = glob.set_index("subject_id").loc["sub-01"].to_numpy(np.float32)
    np.testing.assert_array_equal(data.targets["morphometry"][1, :7], row)
    assert data.summary["morphometry"]["subjects_without_values"] == 1


def test_tables_of_switched_off_tasks_are_not_needed(files):
    data = load_training_data(files.manifest, files.label_table, {})
    assert data.targets == {} and data.width("radiomics") == 0


def test_dataset_items_carry_views_targets_and_nan(files):
    data = load_training_data(files.manifest, files.label_table, _tables(files))
    ds = PretrainDataset(data, VIEWS, seed=0)
    item = ds[2]
    assert item["global_image"].shape == (2, 1, 64, 64, 64)
    assert torch.isnan(item["morphometry"]).all()
    assert int(item["index"]) == 2
    # Same (seed, epoch, index), same views; another epoch, other views.
    torch.testing.assert_close(ds[2]["global_image"], item["global_image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["global_image"], item["global_image"])


def test_a_batch_with_missing_features_masks_them(files):
    data = load_training_data(files.manifest, files.label_table, _tables(files))
    ds = PretrainDataset(data, VIEWS, seed=0)
    torch.manual_seed(0)
    enc = EncoderSpec(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window=4)
    spec = NetworkSpec(
        enc, ("morphometry", "radiomics"), 10, 9, 16, 12, 4, files.n_classes, "linear"
    )
    objective = PretrainObjective(DAMTNetwork(spec), "uncertainty", 0.5).eval()

    # sub-02 has no morphometry at all: its pair with sub-01 gives sub-01's loss alone.
    pair = default_collate([ds[1], ds[2]])
    with torch.no_grad():
        _, losses, valid, _ = objective(pair)
        hidden, _ = objective.network.encode(pair["global_image"][:, 0])
        pred = objective.network.head("morphometry", hidden[-1])[0]
    target = pair["morphometry"][0]
    finite = torch.isfinite(target)
    torch.testing.assert_close(losses["morphometry"], (pred - target).abs()[finite].mean())
    assert bool(valid["morphometry"])

    # A batch where nobody has morphometry: the task drops out of the step.
    alone = default_collate([ds[2]])
    objective.train()
    total, losses, valid, _ = objective(alone)
    assert not bool(valid["morphometry"]) and bool(valid["radiomics"])
    total.backward()
    assert float(objective.balancer.log_vars["morphometry"].grad) == 0.0
    assert float(objective.balancer.log_vars["radiomics"].grad) != 0.0
    head = objective.network.heads["morphometry"]
    assert all(p.grad is not None and not p.grad.any() for p in head.parameters())


def test_atlas_class_outside_the_label_table_is_refused(files, tmp_path):
    labels = pd.read_csv(files.label_table, sep="\t").iloc[:3]
    short = tmp_path / "labels.tsv"
    labels.to_csv(short, sep="\t", index=False)
    data = load_training_data(files.manifest, short, {})
    with pytest.raises(ValueError, match="outside the label table"):
        PretrainDataset(data, VIEWS, seed=0)[0]


def test_unreadable_cache_names_the_subject(tmp_path):
    files = write_training_set(tmp_path, n_subjects=2)
    (files.root / "subjects" / "sub-01" / "cache" / "image.npy").write_bytes(b"garbage")
    data = load_training_data(files.manifest, files.label_table, {})
    with pytest.raises(ValueError, match="subject sub-01: cannot read its cache"):
        PretrainDataset(data, VIEWS, seed=0)[1]


def test_bad_inputs_give_clear_errors(files, tmp_path):
    bad = tmp_path / "labels.tsv"
    pd.DataFrame({"index": [1, 2], "label": [0, 2], "name": ["a", "b"]}).to_csv(
        bad, sep="\t", index=False
    )
    with pytest.raises(ValueError, match=r"run 0\.\.K-1"):
        read_label_table(bad)
    table = tmp_path / "t.parquet"
    pd.DataFrame({"subject_id": ["a", "a"], "x": [1.0, 2.0]}).to_parquet(table)
    with pytest.raises(ValueError, match="more than once"):
        read_feature_table(table)
    pd.DataFrame({"subject_id": ["a"], "x": [np.inf]}).to_parquet(table)
    with pytest.raises(ValueError, match="infinite"):
        read_feature_table(table)
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame(
        {"subject_id": ["a"], "status": ["fail"], "has_cache": [True], "cache_dir": ["x"]}
    ).to_parquet(manifest)
    with pytest.raises(ValueError, match="no subject has status pass/warn"):
        load_training_data(manifest, files.label_table, {})
