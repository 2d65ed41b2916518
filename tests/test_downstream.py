"""Weights a downstream user picks up (issue 26): ``damt.downstream.swin_unetr``/``encoder``
and the MONAI self-supervised layout that ``SwinUNETR.load_from`` reads."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.nets import SwinUNETR
from safetensors.torch import load_file

from damt.config import schema_defaults
from damt.downstream import encoder, read_card, swin_unetr
from damt.model.encoder import SwinEncoder
from damt.model.monai_ssl import monai_ssl_state, script_arguments
from damt.model.spec import EncoderSpec, encoder_spec_from_config
from damt.paths import ENCODER_FILE, MODEL_CARD_FILE, MONAI_SSL_FILE
from damt.training.export import export_encoder, write_model_card


def _run(tmp_path, preset: str):
    """A run folder holding a randomly initialised encoder of ``preset``, exported as the
    trainer exports one."""
    pretrain = {**schema_defaults("pretrain"), "preset": preset}
    torch.manual_seed(0)
    enc = SwinEncoder(encoder_spec_from_config(pretrain))
    run = tmp_path / preset
    run.mkdir()
    export_encoder(enc, run / ENCODER_FILE, run / MONAI_SSL_FILE)
    write_model_card(run / MODEL_CARD_FILE, enc)
    return run, enc


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
