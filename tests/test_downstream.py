"""Weights a downstream user picks up (issue 26): the card's preprocessing and
``damt.downstream.preprocess``, ``swin_unetr``/``encoder``, the MONAI self-supervised layout that
``SwinUNETR.load_from`` reads, and ``damt embed``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import SwinUNETR
from safetensors.torch import load_file

from damt.config import schema_defaults
from damt.downstream import encoder, preprocess, read_card, swin_unetr
from damt.freesurfer.labels import read_label_table
from damt.io import sha256_file
from damt.model.encoder import SwinEncoder
from damt.model.monai_ssl import monai_ssl_state, script_arguments
from damt.model.spec import EncoderSpec
from damt.paths import ENCODER_FILE, IMAGE_FILE, MODEL_CARD_FILE, MONAI_SSL_FILE
from damt.probe.features import cohort_grid, encoder_features
from damt.stages import cache
from damt.volumes import load_volume

from .conftest import REPO, exported_run, run_damt

CACHE = schema_defaults("cache")
SETTINGS = cache.CacheSettings.from_config(CACHE)


def _run(tmp_path, preset: str):
    return exported_run(tmp_path / preset, preset)


@pytest.mark.parametrize("preset", ["tiny", "full", "full_w8"])
def test_swin_unetr_builds_with_the_pretrained_encoder_of_each_preset(tmp_path, preset):
    run, enc = _run(tmp_path, preset)
    model = swin_unetr(run, out_channels=3, norm_name="batch")
    for key, value in enc.swinViT.state_dict().items():
        assert torch.equal(model.swinViT.state_dict()[key], value), key
    assert model.out.conv.conv.out_channels == 3
    frozen = encoder(run / MODEL_CARD_FILE)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    # The encoder's architecture is the weights': a clash is refused, naming it.
    with pytest.raises(ValueError, match=r"fixes window_size=\d+ \(asked for 3\)"):
        swin_unetr(run, out_channels=3, window_size=3)


def test_load_from_sets_every_swin_parameter_to_the_pretrained_one(tmp_path):
    """The MONAI-layout file through ``SwinUNETR.load_from`` (what MONAI's fine-tuning scripts
    call) gives the encoder exactly our weights: each of its parameters and buffers, none left
    at the random initialisation."""
    run, _ = _run(tmp_path, "tiny")
    card, _ = read_card(run)
    torch.manual_seed(1)
    model = SwinUNETR(out_channels=2, **card["architecture"]["swin_unetr_kwargs"])
    model.load_from(torch.load(run / MONAI_SSL_FILE, weights_only=True))
    ours = load_file(str(run / ENCODER_FILE))
    assert set(model.swinViT.state_dict()) == set(ours)
    for key, value in model.swinViT.state_dict().items():
        assert torch.equal(value, ours[key]), key
    layout = card["architecture"]["monai_ssl_weights"]
    assert layout["file"] == MONAI_SSL_FILE
    # The tiny encoder is not what MONAI's scripts build: the card says why.
    assert layout["scripts"]["arguments"] is None
    assert "depths [1, 1, 1, 1] (the scripts build [2, 2, 2, 2])" in layout["scripts"]["why_not"]


def test_the_published_layout_and_the_scripts_options():
    """Keys as in MONAI's published model_swinvit.pt (``module.`` prefix, ``mlp.fc1``), and the
    script options of an encoder the scripts can build; others are refused with the reason."""
    spec = EncoderSpec(embed_dim=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window=7)
    state = SwinEncoder(spec).swinViT.state_dict()
    keys = set(monai_ssl_state(state)["state_dict"])
    assert "module.layers1.0.blocks.0.mlp.fc1.weight" in keys
    assert "module.layers3.0.downsample.reduction.weight" in keys
    assert not [k for k in keys if "linear1" in k or not k.startswith("module.")]
    kwargs = spec.swin_unetr_kwargs()
    assert script_arguments(kwargs) == ["--feature_size=48", "--in_channels=1"]
    with pytest.raises(ValueError, match=r"window_size 8 \(the scripts build 7\)"):
        script_arguments({**kwargs, "window_size": 8})


def test_a_folder_without_a_model_card_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no model card at .*: is .* a finished run"):
        swin_unetr(tmp_path, out_channels=2)
    (tmp_path / MODEL_CARD_FILE).write_text(json.dumps({"weights": "x"}))
    with pytest.raises(ValueError, match="is not a damt model card"):
        swin_unetr(tmp_path, out_channels=2)


def _trained_run(trained):
    return trained.results / "pretrain" / "default"


@pytest.mark.slow
def test_preprocess_equals_the_training_cache_on_the_demo(trained):
    """The trained run's card records the cache's preprocessing, and ``preprocess(run)`` on each
    subject's brainmask.mgz gives exactly the array its training cache holds."""
    run = _trained_run(trained)
    card, _ = read_card(run)
    # The workflow's cache settings (the test override's spacing and size), as the cache used.
    made = {**CACHE, **trained.override()["cache"]}
    settings = cache.CacheSettings.from_config(made)
    assert card["preprocessing"] == cache.preprocessing_card(settings, made)
    assert cache.settings_from_card(card["preprocessing"]) == settings
    manifest = pd.read_parquet(trained.results / "manifest.parquet")
    rows = manifest[manifest["has_cache"].fillna(False).astype(bool)]
    assert len(rows) >= 4
    pipeline = preprocess(run)
    for row in rows.itertuples():
        out = pipeline({"image": str(trained.root / row.path / "mri/brainmask.mgz")})["image"]
        cached = np.load(trained.results / row.cache_dir / IMAGE_FILE)
        assert out.dtype == torch.float16 and tuple(out.shape) == (1, *cached.shape)
        np.testing.assert_array_equal(out[0].numpy(), cached)


@pytest.mark.slow
def test_preprocess_equals_the_cache_stage_on_bert(tmp_path, bert):
    """FreeSurfer's bert (real 256³ conformed volumes): the same array as the cache stage's."""
    run, _ = _run(tmp_path, "tiny")
    image, atlas = load_volume(bert / "mri/brainmask.mgz"), load_volume(bert / "mri/aparc+aseg.mgz")
    table = read_label_table(REPO / CACHE["label_table"])
    expected, _, _ = cache.preprocess(image, atlas, SETTINGS, table)
    out = preprocess(run)({"image": str(bert / "mri/brainmask.mgz")})["image"]
    np.testing.assert_array_equal(out[0].numpy(), expected)


def test_preprocess_masks_and_refuses_what_it_cannot_read(tmp_path):
    """A mask zeroes what lies outside it (the cache's FastSurfer path); a card without
    preprocessing, a newer preprocessing version, an empty or unreadable volume are refused
    with the reason."""
    run, _ = _run(tmp_path, "tiny")
    card, _ = read_card(run)
    rng = np.random.default_rng(0)
    data = rng.uniform(1, 100, (40, 40, 40)).astype(np.float32)
    mask = np.zeros_like(data)
    mask[10:30, 10:30, 10:30] = 1
    for name, values in (("t1", data), ("mask", mask), ("empty", np.zeros_like(data))):
        nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / f"{name}.nii.gz")
    out = preprocess(card)(
        {"image": str(tmp_path / "t1.nii.gz"), "mask": str(tmp_path / "mask.nii.gz")}
    )
    # The crop to the masked foreground leaves its 20³ voxels (padded to min_size).
    assert (out["image"][0].numpy() > 0).sum() <= 20**3
    with pytest.raises(RuntimeError) as empty:
        preprocess(card)({"image": str(tmp_path / "empty.nii.gz")})
    assert "has no voxel above 0" in str(empty.value.__cause__)
    (tmp_path / "bad.mgz").write_bytes(b"not a volume")
    with pytest.raises(RuntimeError) as bad:
        preprocess(card)({"image": str(tmp_path / "bad.mgz")})
    assert "bad.mgz" in str(bad.value.__cause__)
    with pytest.raises(ValueError, match=r"no preprocessing .* the workflow's `cache` section"):
        preprocess({**card, "preprocessing": None})
    newer = {**card, "preprocessing": {**card["preprocessing"], "version": 99}}
    with pytest.raises(ValueError, match="version 99; this damt reads version 1: update damt"):
        preprocess(newer)


@pytest.mark.slow
def test_damt_embed_gives_the_probes_features_and_skips_bad_volumes(trained, tmp_path):
    """``damt embed`` of the manifest's subjects, a truncated MGZ and an empty volume: the
    subjects' features equal the probe's features of their caches (same cohort grid), each bad
    volume is listed with its reason, and the table says which weights made it."""
    run = _trained_run(trained)
    manifest = pd.read_parquet(trained.results / "manifest.parquet")
    cached = manifest[manifest["has_cache"].fillna(False).astype(bool)]
    (tmp_path / "cut.mgz").write_bytes(
        (trained.root / cached["path"].iloc[0] / "mri/brainmask.mgz").read_bytes()[:5000]
    )
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "empty.nii.gz")
    out = tmp_path / "features.parquet"
    sources = [
        trained.results / "manifest.parquet",
        tmp_path / "cut.mgz",
        tmp_path / "empty.nii.gz",
    ]
    done = run_damt("embed", run, *sources, "--out", out, "--batch-size", "3", cwd=trained.root)
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(out)
    included = manifest[manifest["discovery"] == "included"]
    assert sorted(table["subject_id"]) == sorted(included["subject_id"])
    assert set(table["weights_sha256"]) == {sha256_file(run / ENCODER_FILE)}
    failed = pd.read_csv(tmp_path / "features.failed.tsv", sep="\t").set_index("subject_id")
    assert "VolumeError" in failed.loc["cut", "reason"]
    assert "has no voxel above 0" in failed.loc["empty", "reason"]
    not_included = set(manifest["subject_id"]) - set(included["subject_id"])
    assert not_included <= set(failed.index)
    # On the subjects the cache holds, the probe's own features (cohort grid, one at a time).
    dirs = {r.subject_id: trained.results / r.cache_dir for r in cached.itertuples()}
    assert set(dirs) == set(table["subject_id"])
    model = encoder(run)
    stride = read_card(run)[0]["architecture"]["stride"]
    probe = encoder_features(model, dirs, cohort_grid(dirs, stride)).set_index("subject_id")
    ours = table.set_index("subject_id").loc[probe.index, probe.columns]
    np.testing.assert_allclose(ours.to_numpy(), probe.to_numpy(), rtol=1e-4, atol=1e-5)
    # Nothing embedded: exit status 1, and the reasons still written.
    nothing = run_damt("embed", run, tmp_path / "cut.mgz", "--out", tmp_path / "none.parquet")
    assert nothing.returncode == 1 and "embedded 0 volumes" in nothing.stdout
    assert "cut" in (tmp_path / "none.failed.tsv").read_text()
