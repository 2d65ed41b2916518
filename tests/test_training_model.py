"""The network: MONAI's Swin encoder, masked encoding, heads sized from the spec and the data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from damt.model import TASKS, DAMTNetwork, EncoderSpec, NetworkSpec, ViewSpec
from damt.model.encoder import pooled_features
from damt.training.objective import PretrainObjective

ENC = EncoderSpec(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window=4)


def _spec(tasks=TASKS, encoder=ENC, projector="linear", **widths) -> NetworkSpec:
    sizes = {"morphometry_dim": 9, "radiomics_dim": 5, "n_atlas_classes": 6, **widths}
    return NetworkSpec(
        encoder=encoder,
        tasks=tuple(tasks),
        n_rotations=10,
        n_locations=9,
        contrastive_dim=16,
        contrastive_projector=projector,
        **sizes,
    )


def _batch(b=2, crop=64, n_classes=6, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = crop // 16
    return {
        "global_image": torch.rand(b, 2, 1, crop, crop, crop, generator=g),
        "global_rotation": torch.randint(0, 10, (b, 2), generator=g),
        "global_atlas": torch.randint(0, n_classes, (b, crop, crop, crop), generator=g),
        "global_mask": torch.rand(b, m, m, m, generator=g) < 0.75,
        "local_image": torch.rand(b, 1, crop, crop, crop, generator=g),
        "local_atlas": torch.randint(0, n_classes, (b, crop, crop, crop), generator=g),
        "local_rotation": torch.randint(0, 10, (b,), generator=g),
        "local_mask": torch.rand(b, m, m, m, generator=g) < 0.75,
        "location": torch.randint(0, 9, (b,), generator=g),
        "morphometry": torch.randn(b, 9, generator=g),
        "radiomics": torch.randn(b, 5, generator=g),
    }


def test_encode_is_monai_swinvit_and_empty_mask_changes_nothing():
    torch.manual_seed(0)
    net = DAMTNetwork(_spec()).eval()
    x = torch.rand(2, 1, 64, 64, 64)
    hidden, cls = net.encode(x)
    reference = net.encoder.swinViT(x, normalize=True)
    assert [h.shape[1] for h in hidden] == [12, 24, 48, 96, 192]
    for a, b in zip(hidden, reference, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(cls, reference[-1].mean(dim=(2, 3, 4)))
    masked, _ = net.encode_mask(x, torch.zeros(2, 4, 4, 4, dtype=torch.bool))
    for a, b in zip(hidden, masked, strict=True):
        torch.testing.assert_close(a, b)


def test_masked_patches_are_invisible_to_the_encoder():
    torch.manual_seed(0)
    net = DAMTNetwork(_spec()).eval()
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[0, 1:3, :, 2] = True
    x = torch.rand(1, 1, 64, 64, 64)
    y = x.clone()
    y[0, 0, 16:48, :, 32:48] = torch.rand(32, 64, 16)  # change only the masked patches
    hx, _ = net.encode_mask(x, mask)
    hy, _ = net.encode_mask(y, mask)
    for a, b in zip(hx, hy, strict=True):
        torch.testing.assert_close(a, b)
    hz, _ = net.encode(y)
    assert not torch.allclose(hz[-1], hy[-1])


def test_head_widths_come_from_the_spec():
    enc = EncoderSpec(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), window=3)
    net = DAMTNetwork(_spec(encoder=enc, morphometry_dim=13, radiomics_dim=3, n_atlas_classes=4))
    x = torch.rand(1, 1, 64, 64, 64)
    hidden, cls = net.encode(x)
    assert cls.shape == (1, 384)
    assert net.head("rotation", cls).shape == (1, 10)
    assert net.head("location", cls).shape == (1, 9)
    assert net.head("contrastive", cls).shape == (1, 16)
    assert net.head("morphometry", hidden[-1]).shape == (1, 13)
    assert net.head("radiomics", hidden[-1]).shape == (1, 3)
    assert net.head("atlas", hidden).shape == (1, 4, 64, 64, 64)
    assert net.head("mim", hidden[-1]).shape == (1, 1, 64, 64, 64)


@pytest.mark.parametrize("tasks", [(t,) for t in TASKS] + [TASKS], ids=[*TASKS, "all"])
def test_every_parameter_gets_a_gradient(tasks):
    """What lets DDP run without find_unused_parameters, for every task switched on alone."""
    torch.manual_seed(0)
    objective = PretrainObjective(DAMTNetwork(_spec(tasks)), "uncertainty", 0.5)
    total, losses, _, _ = objective(_batch())
    assert set(losses) == set(tasks)
    total.backward()
    missing = [n for n, p in objective.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in objective.parameters())


def test_the_mlp_projector_trains_on_a_batch_of_one_and_old_specs_are_linear():
    """The two-layer projector (pretrain.contrastive.projector: mlp) has no batch statistics,
    so a process's batch of one sample trains; a spec stored before the projector could be
    chosen (no key) is the linear head it had."""
    torch.manual_seed(0)
    spec = _spec(("contrastive",), projector="mlp")
    objective = PretrainObjective(DAMTNetwork(spec), "uncertainty", 0.5)
    head = objective.network.heads["contrastive"]
    assert [type(m) for m in head] == [nn.Linear, nn.GELU, nn.Linear]
    width = ENC.out_channels
    assert (head[0].in_features, head[0].out_features, head[2].out_features) == (width, width, 16)
    total, _, _, _ = objective(_batch(b=1))
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    stored = spec.to_dict()
    assert NetworkSpec.from_dict(stored) == spec
    del stored["contrastive_projector"]
    old = NetworkSpec.from_dict(stored)
    assert isinstance(DAMTNetwork(old).heads["contrastive"], nn.Linear)
    assert old.differences(spec) == [("contrastive_projector", "linear", "mlp")]
    with pytest.raises(ValueError, match="unknown contrastive projector 'bn'"):
        _spec(projector="bn")


def test_switched_off_tasks_build_no_head():
    net = DAMTNetwork(_spec(("rotation", "contrastive")))
    assert set(net.heads) == {"rotation", "contrastive"}
    assert net.encoder.mask_token is None


def test_pooled_features_pads_any_volume_size():
    torch.manual_seed(0)
    net = DAMTNetwork(_spec()).eval()
    encoder = net.encoder.swinViT
    feats = pooled_features(encoder, torch.rand(70, 75, 66))
    assert feats.shape == (1, 192)
    x = torch.rand(2, 1, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(pooled_features(encoder, x), net.encode(x)[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embed_dim": 16}, "multiple of 12"),
        ({"num_heads": (5, 2, 4, 8)}, "not divisible"),
        ({"depths": (1, 1, 1)}, "4 entries"),
    ],
)
def test_encoder_spec_refuses_unusable_architectures(kwargs, message):
    base = {"embed_dim": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "window": 4}
    with pytest.raises(ValueError, match=message):
        EncoderSpec(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("views", "atlas", "message"),
    [
        (ViewSpec(48, 64, 40, 16), True, "multiple of 32"),
        (ViewSpec(64, 32, 24, 16), True, "at least 64"),
        (ViewSpec(64, 64, 40, 12), True, "mim_patch"),
    ],
)
def test_view_spec_refuses_crops_the_model_cannot_use(views, atlas, message):
    with pytest.raises(ValueError, match=message):
        views.check(ENC, atlas_task=atlas)
    ViewSpec(64, 32, 24, 16).check(ENC, atlas_task=False)  # small local crop is fine without it


def test_network_spec_refuses_empty_tables():
    with pytest.raises(ValueError, match="morphometry task is on but its table has no"):
        _spec(morphometry_dim=0)


def test_gradient_checkpointing_is_not_a_network_difference():
    """Resuming with checkpointing switched either way is allowed; another window is not."""
    from dataclasses import replace

    assert _spec().differences(_spec(encoder=replace(ENC, checkpointing=True))) == []
    assert _spec().differences(_spec(encoder=replace(ENC, window=8))) == [("encoder.window", 4, 8)]
