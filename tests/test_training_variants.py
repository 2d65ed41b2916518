"""The research plan's training variants: curriculum, augmentation, gradient accumulation."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.transforms import Rand3DElastic
from safetensors.torch import load_file
from torch.utils.data import DataLoader, default_collate

from damt.config import ConfigError, load_config, schema_defaults
from damt.features import FEATURE_GROUPS
from damt.model import TASKS
from damt.model.network import DAMTNetwork
from damt.paths import normalized_table_file
from damt.training.augment import Augmenter, CoarseElasticd
from damt.training.checkpoint import load_checkpoint
from damt.training.curriculum import Curriculum
from damt.training.data import PretrainDataset
from damt.training.inputs import TrainInputs
from damt.training.launch.signature import model_settings
from damt.training.objective import PretrainObjective
from damt.training.run import network_spec
from damt.training.schedules import apply_schedules
from damt.training.settings import AugmentSpec, ContrastiveSettings, TrainSettings
from damt.training.step import accumulated_step, param_groups
from tests.training_data import train_in_process, write_config, write_training_set

NON_CONTRASTIVE = ("rotation", "location", "atlas", "morphometry", "radiomics", "mim")
PLAN = [  # the research plan's three phases, on a 3-epoch run
    {"until_epoch": 1, "tasks": ["rotation", "mim"]},
    {"until_epoch": 2, "tasks": ["rotation", "mim", "contrastive", "location"]},
    {"until_epoch": 3, "tasks": ["rotation", "mim", "contrastive", "location", "atlas",
                                 "morphometry", "radiomics"]},
]  # fmt: skip
AUGMENT = {
    "elastic": {"prob": 1.0, "sigma": [4.0, 6.0], "magnitude": [10.0, 30.0]},
    "bias_field": {"prob": 1.0},
    "contrast": {"prob": 1.0},
    "noise": {"prob": 1.0, "std": 0.02},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("variants"), n_subjects=4)


def _settings(files, name: str, **overrides) -> tuple[TrainSettings, dict]:
    config = load_config(write_config(files.root / f"{name}.yaml", **overrides))
    return TrainSettings.from_config(config), config


def _inputs(files) -> TrainInputs:
    tables = {k: files.tables_dir / normalized_table_file(k) for k in FEATURE_GROUPS}
    return TrainInputs(files.manifest, files.label_table, tables)


# ---------------------------------------------------------------- settings and the signature


@pytest.mark.parametrize(
    ("curriculum", "tasks", "message"),
    [
        ([{"until_epoch": 1, "tasks": ["rotation", "jigsaw"]}], {}, r"unknown task.*jigsaw"),
        ([{"until_epoch": 1, "tasks": ["atlas"]}], {"atlas": False},
         r"\['atlas'\] are switched off"),
        ([{"until_epoch": 3, "tasks": ["mim"]}], {},
         r"until_epoch 3 is beyond pretrain.epochs \(2\)"),
        ([{"until_epoch": 1, "tasks": ["mim"]}, {"until_epoch": 1, "tasks": ["rotation"]}], {},
         r"phase 2: until_epoch 1 must be larger than the previous phase's \(1\)"),
        ([{"until_epoch": 1, "tasks": []}], {}, r"phase 1 \(until_epoch 1\) names no task"),
    ],
)  # fmt: skip
def test_bad_curricula_stop_at_parse_time(tmp_path, curriculum, tasks, message):
    config = load_config(write_config(tmp_path / "c.yaml", curriculum=curriculum, tasks=tasks))
    with pytest.raises(ValueError, match=message):
        TrainSettings.from_config(config)


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"elastic": {"sigma": [8.0, 5.0]}}, r"elastic.sigma: \[8.0, 5.0\] is not a range"),
        ({"elastic": {"sigma": [0.0, 5.0]}}, r"elastic.sigma: values must be positive"),
        ({"elastic": {"magnitude": [-1.0, 5.0]}}, r"elastic.magnitude: -1.0 is below 0"),
        ({"contrast": {"gamma": [0.0, 1.5]}}, r"contrast.gamma: values must be positive"),
        ({"bias_field": {"coeff": [0.2, 0.1]}}, r"bias_field.coeff: \[0.2, 0.1\] is not a range"),
    ],
)
def test_bad_augmentation_ranges_stop_at_parse_time(tmp_path, augment, message):
    config = load_config(write_config(tmp_path / "c.yaml", augment=augment))
    with pytest.raises(ValueError, match=message):
        TrainSettings.from_config(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"accumulate_steps": 0}, r"pretrain.accumulate_steps: 0 is less than the minimum of 1"),
        ({"augment": {"noise": {"prob": 1.5}}}, r"pretrain.augment.noise.prob: 1.5 is greater"),
    ],
)
def test_out_of_range_values_are_refused_by_the_schema(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        write_config(tmp_path / "c.yaml", **overrides)


def test_the_phase_follows_from_the_epoch():
    tasks = ("rotation", "location", "contrastive", "atlas", "mim")
    curriculum = Curriculum.from_config(
        [{"until_epoch": 2, "tasks": ["mim", "rotation"]}, {"until_epoch": 3, "tasks": ["atlas"]}],
        tasks,
        epochs=5,
    )
    # 0-based epochs 0-1 (1-based 1-2), then epoch 2 (1-based 3), then everything.
    assert [curriculum.active(e) for e in range(5)] == [
        ("rotation", "mim"), ("rotation", "mim"), ("atlas",), tasks, tasks,
    ]  # fmt: skip
    assert Curriculum.from_config([], tasks, epochs=5).active(0) == tasks


def test_default_switches_keep_the_signature_and_each_change_counts(tmp_path):
    p = load_config(write_config(tmp_path / "c.yaml"))["pretrain"]
    assert p["accumulate_steps"] == 1 and p["curriculum"] == [] and "augment" in p
    # The settings as they were before these keys existed: the same signature.
    before = {k: v for k, v in p.items() if k not in ("accumulate_steps", "curriculum", "augment")}
    assert model_settings(p) == model_settings(before)
    # A range of a switched-off augmentation shapes nothing either.
    elastic = {**p["augment"]["elastic"], "sigma": [1, 2]}
    off = {**p, "augment": {**p["augment"], "elastic": elastic}}
    assert model_settings(off) == model_settings(p)
    changed = {
        "accumulate_steps": 2,
        "curriculum": PLAN[:1],
        "augment": {**p["augment"], "noise": {**p["augment"]["noise"], "prob": 0.5}},
    }
    for key, value in changed.items():
        assert model_settings({**p, key: value}) != model_settings(p), key


# ---------------------------------------------------------------- the curriculum's freezing


@pytest.mark.slow
def test_a_phase_freezes_the_other_tasks_heads_and_weights(files):
    settings, _ = _settings(files, "freeze", weight_decay=0.5)
    data = _inputs(files).load(settings.tasks)
    torch.manual_seed(0)
    objective = PretrainObjective(DAMTNetwork(network_spec(settings, data)), "uncertainty", 0.5)
    objective.set_active(("rotation", "location"))
    frozen = {
        id(p)
        for task in ("contrastive", "atlas", "morphometry", "radiomics", "mim")
        for p in objective.task_parameters(task)
    }
    assert id(objective.network.encoder.mask_token) in frozen
    before = {n: p.detach().clone() for n, p in objective.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(objective), lr=1e-3)
    apply_schedules(optimizer, 1e-3, 0.5)  # weight decay on: it must not touch frozen weights
    batch = default_collate([PretrainDataset(data, settings.views, 0)[i] for i in (0, 1)])
    out = accumulated_step(objective, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                           [batch], "fp32", 1.0)  # fmt: skip
    assert out.applied and set(out.losses) == {"rotation", "location"}
    for name, p in objective.named_parameters():
        if id(p) in frozen:
            assert p.grad is None and not p.requires_grad, name
            assert torch.equal(p.detach(), before[name]), name
        else:
            assert p.grad is not None, name
    moved = [n for n, p in objective.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any(n.startswith("network.heads.rotation") for n in moved)
    assert "balancer.log_vars.location" in moved and "balancer.log_vars.atlas" not in moved
    # The next phase thaws them.
    objective.set_active(settings.tasks)
    assert all(p.requires_grad for p in objective.parameters())


@pytest.mark.slow
def test_a_phase_without_the_contrastive_task_freezes_dinos_prototypes(files):
    settings, _ = _settings(files, "freeze-dino")
    data = _inputs(files).load(settings.tasks)
    defaults = ContrastiveSettings.from_pretrain(schema_defaults("pretrain"))
    method = replace(defaults, method="dino", dino=replace(defaults.dino, out_dim=64))
    network = DAMTNetwork(network_spec(settings, data))
    objective = PretrainObjective(network, "uncertainty", 0.5, contrastive=method)
    objective.set_active(("rotation", "mim"))
    assert not any(p.requires_grad for p in objective.prototypes.parameters())
    assert not any(p.requires_grad for p in objective.teacher.parameters())
    objective.set_active(settings.tasks)
    assert all(p.requires_grad for p in objective.prototypes.parameters())
    # The teacher follows the student by EMA only, in every phase.
    assert not any(p.requires_grad for p in objective.teacher.parameters())


@pytest.mark.slow
def test_ddp_runs_across_a_phase_change_with_accumulation(ddp_runs):
    out = ddp_runs / "phases"
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    records = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r and "loss/rotation" in r]
    # 5 subjects padded to 6: 3 micro-batches of 1 per rank, 2 optimizer steps (2 + 1) per epoch.
    assert [r["step"] for r in epochs] == [2, 4]
    assert epochs[0]["loss/atlas"] is None and epochs[0]["loss/mim"] is not None
    assert all(epochs[1][f"loss/{t}"] is not None for t in ("atlas", "location", "contrastive"))
    card = json.loads((out / "run" / "model_card.json").read_text())["pretraining"]
    assert card["global_batch"] == 4 and card["accumulate_steps"] == 2 and card["steps"] == 4
    assert card["curriculum"] == [{"until_epoch": 1, "tasks": ["rotation", "mim"]}]


# ---------------------------------------------------------------- gradient accumulation


@pytest.mark.slow
def test_accumulating_two_batches_of_one_is_one_step_on_a_batch_of_two(files):
    settings, _ = _settings(files, "accum", tasks={"contrastive": False})
    data = _inputs(files).load(settings.tasks)
    # Targets without missing values: a masked L1 is then a mean over samples, as the others.
    for task, values in data.targets.items():
        data.targets[task] = np.random.default_rng(1).normal(size=values.shape).astype(np.float32)
    items = [PretrainDataset(data, settings.views, 0)[i] for i in (0, 1)]

    def one_step(batches):
        torch.manual_seed(0)
        objective = PretrainObjective(DAMTNetwork(network_spec(settings, data)), "uncertainty", 0.5)
        # SGD: its update is the gradient itself. (AdamW's first step, g / (|g| + eps), turns
        # float32 rounding of near-zero gradients into differences of up to 2 lr.)
        optimizer = torch.optim.SGD(param_groups(objective), lr=0.1)
        out = accumulated_step(objective, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                               batches, "fp32", 1.0)  # fmt: skip
        assert out.applied
        grads = {n: p.grad.clone() for n, p in objective.named_parameters()}
        return objective, grads, out

    large, large_grads, large_out = one_step([default_collate(items)])
    micro, micro_grads, micro_out = one_step([default_collate([x]) for x in items])
    for name, grad in large_grads.items():
        torch.testing.assert_close(micro_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # The same sums in another order (float32): the parameters agree to lr × 1e-6.
    for (name, a), b in zip(large.named_parameters(), micro.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(micro_out.total, large_out.total, rtol=1e-5, atol=1e-6)
    assert micro_out.stats["rotation/count"] == large_out.stats["rotation/count"] == 4


# ---------------------------------------------------------------- augmentation


def test_the_elastic_field_moves_image_and_atlas_together():
    # 4-voxel blocks of constant intensity (k + 1) / 6, one class k each: the atlas is a
    # function of the image.
    classes = np.kron(np.arange(16**3).reshape(16, 16, 16) % 5, np.ones((4, 4, 4)))
    classes = classes.astype(np.uint8)
    image = (classes.astype(np.float32) + 1) / 6
    spec = replace(
        AugmentSpec.from_config(schema_defaults("pretrain")["augment"]),
        elastic_prob=1.0, elastic_sigma=(4.0, 6.0), elastic_magnitude=(100.0, 200.0),
    )  # fmt: skip
    moved_image, moved_atlas = Augmenter(spec)(image, classes, np.random.default_rng(3))
    assert moved_atlas.dtype == np.uint8 and moved_image.shape == classes.shape
    assert (moved_atlas != classes).mean() > 0.2  # it did deform
    # Where the trilinear image is exactly a class level, it was sampled inside one block
    # (a blend along a face is not a level but by chance); there the atlas must be that class.
    level = moved_image * 6 - 1
    pure = (np.abs(level - np.rint(level)) < 1e-3) & (moved_image > 0.5 / 6)
    from_image = np.rint(level).clip(0, 4).astype(np.uint8)
    assert pure.mean() > 0.3
    assert (from_image == moved_atlas)[pure].mean() > 0.999
    # An atlas deformed by another draw does not line up.
    _, other = Augmenter(spec)(image, classes, np.random.default_rng(4))
    assert (from_image == other)[pure].mean() < 0.7


@pytest.mark.slow
def test_the_coarse_elastic_field_has_monais_displacement_statistics():
    n, sigma = 80, 5.0
    coarse = CoarseElasticd(["image"], (sigma, sigma), (100.0, 100.0), 1.0, ["bilinear"])
    monai = Rand3DElastic((sigma, sigma), (100.0, 100.0), prob=1.0, padding_mode="zeros")
    # An image that holds its own first coordinate: warped, it shows the displacement.
    coord = torch.arange(float(n)).view(1, n, 1, 1).expand(1, n, n, n).contiguous()
    inner = (slice(None), *(slice(20, n - 20),) * 3)
    spread = {"coarse": [], "monai": []}
    for seed in range(6):
        warped = coarse.set_random_state(seed)({"image": coord})["image"]
        spread["coarse"].append(float((warped - coord)[inner].std()))
        warped = torch.as_tensor(monai.set_random_state(seed)(coord)).as_subclass(torch.Tensor)
        spread["monai"].append(float((warped - coord)[inner].std()))
    ratio = np.mean(spread["coarse"]) / np.mean(spread["monai"])
    assert 0.85 < ratio < 1.15, spread


def test_augmentation_is_drawn_per_seed_epoch_and_subject(files):
    settings, _ = _settings(files, "aug", augment=AUGMENT)
    assert settings.augment.enabled == ("elastic", "bias_field", "contrast", "noise")
    data = _inputs(files).load(settings.tasks)
    plain = PretrainDataset(data, settings.views, 0)
    dataset = PretrainDataset(data, settings.views, 0, settings.augment)
    first = dataset[1]
    again = PretrainDataset(data, settings.views, 0, settings.augment)[1]
    for key, value in first.items():
        torch.testing.assert_close(value, again[key], rtol=0, atol=0, equal_nan=True, msg=key)
    # The crops, rotations and masks are those without augmentation; the intensities differ.
    base = plain[1]
    for key in ("global_rotation", "local_rotation", "location", "global_mask", "local_mask"):
        assert torch.equal(base[key], first[key]), key
    assert not torch.equal(base["global_image"], first["global_image"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["global_image"], first["global_image"])
    assert not torch.equal(dataset[0]["global_image"], first["global_image"])


@pytest.mark.slow
def test_augmented_batches_do_not_depend_on_the_worker_count(files):
    settings, _ = _settings(files, "aug_workers", augment=AUGMENT)
    data = _inputs(files).load(settings.tasks)
    dataset = PretrainDataset(data, settings.views, 0, settings.augment)
    dataset.set_epoch(2)
    runs = [list(DataLoader(dataset, batch_size=2, num_workers=workers)) for workers in (0, 2)]
    for a, b in zip(*runs, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)


# ---------------------------------------------------------------- a whole run


@pytest.mark.slow
def test_a_run_with_every_variant_resumes_after_a_kill_and_exports(tmp_path, caplog):
    """In this process (tests.training_data.train_in_process): stopped after its first
    checkpoint, resumed into the next curriculum phase, exported."""
    caplog.set_level(logging.INFO, logger="damt")
    files = write_training_set(tmp_path / "data", n_subjects=2)
    config = write_config(
        tmp_path / "c.yaml", epochs=3, save_every=0, batch_size_per_gpu=1, accumulate_steps=2,
        curriculum=PLAN, augment={"elastic": {"prob": 0.5}, "noise": {"prob": 0.5}},
    )  # fmt: skip
    out = tmp_path / "run"
    train_in_process(files, config, out, interrupt=True)
    assert load_checkpoint(out / "checkpoints").epoch == 1

    caplog.clear()
    train_in_process(files, config, out)
    assert "resuming" in caplog.text and "curriculum phase, tasks" in caplog.text

    card = json.loads((out / "model_card.json").read_text())
    pretraining = card["pretraining"]
    # 2 subjects, batch 1: 2 micro-batches per epoch, 1 optimizer step of 2 × 1 samples.
    assert pretraining["steps"] == 3 and pretraining["global_batch"] == 2
    assert pretraining["accumulate_steps"] == 2
    # The phases' tasks in the network's order.
    assert pretraining["curriculum"] == [
        {"until_epoch": p["until_epoch"], "tasks": [t for t in TASKS if t in p["tasks"]]}
        for p in PLAN
    ]
    assert pretraining["augment"] == ["elastic", "noise"]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = {r["epoch"]: r for r in records if "loss/rotation" in r}
    assert sorted(epochs) == [0, 1, 2]
    assert epochs[0]["loss/location"] is None and epochs[1]["loss/location"] is not None
    assert epochs[1]["loss/atlas"] is None and epochs[2]["loss/atlas"] is not None
    net = SwinUNETR(out_channels=3, **card["architecture"]["swin_unetr_kwargs"])
    net.swinViT.load_state_dict(load_file(str(out / "encoder.safetensors")), strict=True)
