"""The contrastive task's methods (NT-Xent, its queue, VICReg, DINO), the EMA teacher, their
settings, checks and run signature (pretrain.contrastive, pretrain.ema)."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.networks.nets import SwinUNETR
from safetensors.torch import load_file
from torch import nn

from damt.config import load_config
from damt.training.checkpoint import load_checkpoint
from damt.training.launch.checks import LaunchError, check_run_settings
from damt.training.launch.signature import model_settings
from damt.training.losses import contrastive_logits, dino_loss, vicreg_terms
from damt.training.schedules import momentum_schedule
from damt.training.settings import TrainSettings
from damt.training.teacher import Center, EmaTeacher, NegativeQueue, Prototypes
from tests.training_data import METHODS, train_in_process, write_config, write_training_set


def test_vicreg_terms_match_a_hand_computation():
    z1 = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.4, 0.6]], requires_grad=True)
    z2 = torch.tensor([[0.1, 0.0], [0.2, 0.2], [0.4, 0.4]])
    t = vicreg_terms(z1, z2)
    t.loss.backward()
    assert torch.isfinite(z1.grad).all()
    t = vicreg_terms(z1.detach(), z2)
    # Invariance: squared differences 0.01, 0.04, 0.04 over 6 entries.
    assert float(t.invariance) == pytest.approx(0.09 / 6)
    # Variance (unbiased): z1 columns 0.04 and 0.12, z2 columns 0.07/3 and 0.04.
    hinge = [1 - math.sqrt(v + 1e-4) for v in (0.04, 0.12, 0.07 / 3, 0.04)]
    assert float(t.variance) == pytest.approx((hinge[0] + hinge[1]) / 4 + (hinge[2] + hinge[3]) / 4)
    # Covariance: off-diagonal 0.06 (z1) and 0.03 (z2), twice each, squared, / D = 2.
    assert float(t.covariance) == pytest.approx(2 * 0.06**2 / 2 + 2 * 0.03**2 / 2)
    expected = 25 * t.invariance + 25 * t.variance + 1 * t.covariance
    assert float(t.loss) == pytest.approx(float(expected))
    assert float(t.loss) == pytest.approx(19.75367, rel=1e-5)
    assert bool(t.defined)


def test_vicreg_of_a_single_sample_is_finite_and_undefined():
    t = vicreg_terms(torch.ones(1, 4), torch.zeros(1, 4))
    assert torch.isfinite(t.loss) and not bool(t.defined)
    assert float(t.covariance) == 0.0


def test_vicreg_variance_term_vanishes_above_the_target():
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(64, 8, generator=g)
    assert float(vicreg_terms(z, z).variance) == 0.0
    assert float(vicreg_terms(z, z).invariance) == 0.0


def _softmax(x: list[float]) -> list[float]:
    e = [math.exp(v - max(x)) for v in x]
    return [v / sum(e) for v in e]


def test_dino_loss_centres_and_sharpens_the_teacher():
    teacher = [torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[0.0, 2.0, 0.0]])]
    student = [torch.tensor([[0.3, 0.1, 0.0]]), torch.tensor([[0.0, 0.2, 0.4]])]
    student.append(torch.tensor([[1.0, 1.0, 0.0]]))  # the local view
    center = torch.tensor([[0.5, 0.5, 0.0]])
    tt, ts = 0.5, 0.25
    targets = [
        _softmax([(a - c) / tt for a, c in zip(t[0].tolist(), center[0].tolist(), strict=True)])
        for t in teacher
    ]
    logps = [[math.log(p) for p in _softmax([v / ts for v in s[0].tolist()])] for s in student]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # teacher view, other student view
    expected = (
        sum(-sum(p * q for p, q in zip(targets[i], logps[j], strict=True)) for i, j in pairs) / 4
    )
    assert float(dino_loss(student, teacher, center, ts, tt)) == pytest.approx(expected)

    # Centring: a teacher output equal to the centre is a uniform target, whatever its values.
    constant = torch.tensor([[4.0, -1.0, 2.0]])
    uniform = dino_loss([torch.zeros(1, 3)] * 2, [constant] * 2, constant, 1.0, 0.04)
    assert float(uniform) == pytest.approx(math.log(3))
    # Sharpening: at DINO's 0.04 the teacher's target is (nearly) one-hot on its largest score,
    # at temperature 1 it is its plain softmax.
    t = [torch.tensor([[1.0, 0.0, 0.0]])] * 2
    s = [torch.tensor([[0.0, 1.0, 0.0]])] * 2
    zero = torch.zeros(1, 3)
    sharp = -math.log(math.exp(0) / (math.exp(1) + 2))
    assert float(dino_loss(s, t, zero, 1.0, 0.04)) == pytest.approx(sharp, rel=1e-6)
    soft = _softmax([1.0, 0.0, 0.0])
    plain = -sum(p * math.log(q) for p, q in zip(soft, _softmax([0.0, 1.0, 0.0]), strict=True))
    assert float(dino_loss(s, t, zero, 1.0, 1.0)) == pytest.approx(plain)


def test_dino_centre_is_an_ema_of_the_teacher_mean():
    center = Center(3, momentum=0.9)
    center.update(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    torch.testing.assert_close(center.center, torch.tensor([[0.2, 0.2, 0.2]]))
    center.update(torch.tensor([[0.0, 0.0, 12.0]]))
    torch.testing.assert_close(center.center, torch.tensor([[0.18, 0.18, 1.38]]))


def test_ema_update_moves_the_teacher_towards_the_student():
    student = nn.Linear(3, 2)
    teacher = EmaTeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    start = [p.detach().clone() for p in teacher.encoder.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update([student], 0.9)
    for t, s, t0 in zip(teacher.encoder.parameters(), student.parameters(), start, strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s.detach())
    kept = [p.detach().clone() for p in teacher.encoder.parameters()]
    teacher.update([student], 1.0)  # the end of DINO's schedule: the teacher stays
    for t, k in zip(teacher.encoder.parameters(), kept, strict=True):
        assert torch.equal(t, k)
    with pytest.raises(ValueError, match="holds 1 modules, 2 given"):
        teacher.update([student, student], 0.5)


def test_teacher_momentum_schedules():
    dino = momentum_schedule(0.996, 3, 4, cosine=True)
    assert (
        dino.shape == (12,) and dino[0] == pytest.approx(0.996) and dino[-1] == pytest.approx(1.0)
    )
    assert np.all(np.diff(dino) >= 0)
    assert np.all(momentum_schedule(0.999, 2, 3, cosine=False) == 0.999)


def test_prototypes_score_cosines_with_unit_prototypes():
    layer = Prototypes(4, 5)
    x = 10 * torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    scores = layer(x).detach()
    assert scores.shape == (3, 5) and float(scores.abs().max()) <= 1.0 + 1e-6
    unit_x = x / x.norm(dim=1, keepdim=True)
    unit_w = layer.weight.detach() / layer.weight.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close(scores, unit_x @ unit_w.T)
    torch.testing.assert_close(layer(7 * x).detach(), scores)  # the scale of z does not count


def test_queue_is_a_ring_buffer_of_the_latest_keys():
    queue = NegativeQueue(5, 2)
    keys, ids = queue.entries()
    assert (ids == -1).all()
    queue.push(torch.ones(3, 2), torch.tensor([1, 2, 3]))
    queue.push(2 * torch.ones(4, 2), torch.tensor([4, 5, 6, 7]))
    keys, ids = queue.entries()
    assert ids.tolist() == [6, 7, 3, 4, 5] and int(queue.pointer) == 2
    assert keys[2].tolist() == [1.0, 1.0] and keys[0].tolist() == [2.0, 2.0]
    queue.push(torch.zeros(7, 2), torch.arange(10, 17))  # more than fits: the last 5
    assert sorted(queue.entries()[1].tolist()) == [12, 13, 14, 15, 16]


def test_queue_entries_are_negatives_except_own_subject_and_empty_slots():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    qkeys = torch.nn.functional.normalize(torch.randn(4, 4, generator=g), dim=1)
    qids = torch.tensor([0, 5, 6, -1])  # subject 0 is an anchor; the last slot is empty
    ids = torch.tensor([0, 1])
    c = contrastive_logits(z1, z2, 0.5, ids, (qkeys, qids))
    assert c.logits.shape == (4, 8)
    finite = torch.isfinite(c.logits)
    # Subject 0's anchors: its partner view + subject 1's two + queue 5, 6; subject 1's: also
    # queue 0.
    assert finite.sum(1).tolist() == [5, 6, 5, 6]
    assert not finite[:, 7].any() and finite[1, 4] and not finite[0, 4]
    plain = contrastive_logits(z1, z2, 0.5, ids)
    torch.testing.assert_close(c.logits[:, :4], plain.logits)
    assert c.keys.shape == (4, 4) and c.key_ids.tolist() == [0, 1, 0, 1]
    # One subject in the batch: the queue's other subjects make the loss defined.
    one = contrastive_logits(z1[:1], z2[:1], 0.5, ids[:1], (qkeys, qids))
    assert bool(one.defined) and not bool(contrastive_logits(z1[:1], z2[:1], 0.5, ids[:1]).defined)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"contrastive": {"method": "dino"}, "tasks": {"contrastive": False}},
            "method is dino but the contrastive task is off",
        ),
        (
            {"contrastive": {"method": "vicreg"}, "tasks": {"contrastive": False}},
            "method is vicreg but the contrastive task is off",
        ),
        (
            {"contrastive": {"queue_size": 8}, "tasks": {"contrastive": False}},
            "queue_size is 8 but the contrastive task is off",
        ),
        ({"contrastive": {"method": "vicreg", "queue_size": 8}}, "method is vicreg, which uses no"),
        ({"contrastive": {"method": "dino", "queue_size": 8}}, "method is dino, which uses no"),
        ({"contrastive": {"export": "teacher"}}, "method ntxent has no teacher"),
        ({"contrastive": {"method": "vicreg", "export": "teacher"}}, "method vicreg has no"),
    ],
)
def test_bad_contrastive_combinations_stop_at_parse_time(tmp_path, overrides, message):
    config = load_config(write_config(tmp_path / "c.yaml", **overrides))
    with pytest.raises(ValueError, match=message):
        TrainSettings.from_config(config)
    with pytest.raises(LaunchError, match=message):
        check_run_settings(config["pretrain"])


def test_schema_refuses_unknown_methods_and_out_of_range_values(tmp_path):
    for bad, key in (
        ({"contrastive": {"method": "byol"}}, "pretrain.contrastive.method"),
        ({"contrastive": {"queue_size": -1}}, "pretrain.contrastive.queue_size"),
        ({"ema": {"momentum": 1.0}}, "pretrain.ema.momentum"),
        ({"contrastive": {"dino": {"teacher_temperature": 0}}}, "dino.teacher_temperature"),
    ):
        with pytest.raises(ValueError, match=re.escape(key)):
            write_config(tmp_path / "c.yaml", **bad)


def test_valid_combinations_parse(tmp_path):
    for overrides in (
        {"contrastive": {"method": "dino", "export": "teacher"}, "ema": {"enabled": True}},
        {"contrastive": {"method": "vicreg"}, "ema": {"enabled": True}},
        {"contrastive": {"queue_size": 64}},
        {"ema": {"enabled": True}, "tasks": {"contrastive": False}},
    ):
        settings = TrainSettings.from_config(
            load_config(write_config(tmp_path / "c.yaml", **overrides))
        )
        assert settings.contrastive.method == overrides.get("contrastive", {}).get(
            "method", "ntxent"
        )


def _pretrain(tmp_path, **overrides) -> dict:
    return load_config(write_config(tmp_path / "c.yaml", **overrides))["pretrain"]


def test_default_contrastive_and_ema_keep_the_signatures_of_earlier_runs(tmp_path):
    p = _pretrain(tmp_path)
    assert p["contrastive"]["method"] == "ntxent" and p["ema"]["enabled"] is False
    before = {k: v for k, v in p.items() if k not in ("contrastive", "ema")}
    assert model_settings(p) == model_settings(before)
    # Settings of methods not in use, and an EMA momentum while the EMA is off, change nothing.
    unused = {
        **p,
        "contrastive": {**p["contrastive"], "dino": {"out_dim": 7}, "vicreg": {"variance": 1}},
        "ema": {"enabled": False, "momentum": 0.5},
    }
    assert model_settings(unused) == model_settings(before)


@pytest.mark.parametrize(
    "overrides",
    [
        {"contrastive": {"method": "vicreg"}},
        {"contrastive": {"method": "dino"}},
        {"contrastive": {"queue_size": 16}},
        {"ema": {"enabled": True}},
    ],
)
def test_each_switch_changes_the_signature(tmp_path, overrides):
    assert model_settings(_pretrain(tmp_path, **overrides)) != model_settings(_pretrain(tmp_path))


def test_a_method_signature_follows_its_own_settings_only(tmp_path):
    vicreg = _pretrain(tmp_path, contrastive={"method": "vicreg"})
    other_cov = _pretrain(tmp_path, contrastive={"method": "vicreg", "vicreg": {"covariance": 2}})
    other_dino = _pretrain(tmp_path, contrastive={"method": "vicreg", "dino": {"out_dim": 8}})
    assert model_settings(other_cov) != model_settings(vicreg)
    assert model_settings(other_dino) == model_settings(vicreg)
    dino = _pretrain(tmp_path, contrastive={"method": "dino"})
    teacher = _pretrain(tmp_path, contrastive={"method": "dino", "export": "teacher"})
    assert model_settings(teacher) != model_settings(dino)
    ema = _pretrain(tmp_path, ema={"enabled": True})
    assert model_settings(_pretrain(tmp_path, ema={"enabled": True, "momentum": 0.99})) != (
        model_settings(ema)
    )


def _vicreg_and_centre_rank(rank: int, store: str, z1, z2, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    lo, hi = (0, 3) if rank == 0 else (3, 6)
    a = z1[lo:hi].clone().requires_grad_(True)
    b = z2[lo:hi].clone().requires_grad_(True)
    t = vicreg_terms(a, b)
    t.loss.backward()
    center = Center(z1.shape[1], momentum=0.9)
    center.update(z1[:4] if rank == 0 else z1[4:])  # uneven rows: 4 and 2
    torch.save(
        {"t": [float(x) for x in (t.invariance, t.variance, t.covariance, t.loss.detach())],
         "ga": a.grad, "gb": b.grad, "center": center.center},
        f"{out}/vicreg{rank}.pt",
    )  # fmt: skip
    dist.destroy_process_group()


@pytest.mark.slow
def test_vicreg_and_dino_centre_see_the_global_batch_across_ranks(tmp_path):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    mp.spawn(_vicreg_and_centre_rank, args=(str(tmp_path / "s"), z1, z2, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"vicreg{r}.pt") for r in (0, 1)]
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    full = vicreg_terms(a, b)
    full.loss.backward()
    # Variance and covariance: the global batch's on both ranks; invariance: each rank's half.
    for i in (1, 2):
        assert ranks[0]["t"][i] == pytest.approx(ranks[1]["t"][i])
        assert ranks[0]["t"][i] == pytest.approx(
            float((full.variance, full.covariance)[i - 1].detach())
        )
    assert (ranks[0]["t"][3] + ranks[1]["t"][3]) / 2 == pytest.approx(
        float(full.loss.detach()), rel=1e-5
    )
    # The ranks' gradients averaged as DDP does are the single-process gradients.
    torch.testing.assert_close(torch.cat([ranks[0]["ga"], ranks[1]["ga"]]) / 2, a.grad)
    torch.testing.assert_close(torch.cat([ranks[0]["gb"], ranks[1]["gb"]]) / 2, b.grad)
    # The centre moves by the mean over both ranks' rows, the same on each.
    expected = 0.1 * z1.mean(0, keepdim=True)
    for rank in ranks:
        torch.testing.assert_close(rank["center"], expected)


# ---- whole runs: each method trains, resumes after a kill, and exports loadable weights ----

RUNS = METHODS
# The state each variant keeps beside the network (checkpointed, equal on every rank).
STATE = {
    "vicreg": (),
    "dino": (
        "teacher.encoder.",
        "teacher.projection.",
        "teacher.prototypes.",
        "center.center",
        "prototypes.weight",
    ),
    "ntxent_queue_ema": ("teacher.encoder.", "queue.keys", "queue.ids", "queue.pointer"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("methods"), n_subjects=2)


def _load_strictly(path: Path, card: dict) -> None:
    net = SwinUNETR(out_channels=3, **card["architecture"]["swin_unetr_kwargs"])
    net.swinViT.load_state_dict(load_file(str(path)), strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(RUNS))
def test_each_method_trains_resumes_after_a_kill_and_exports(files, tmp_path, variant, caplog):
    """In this process (tests.training_data.train_in_process): an uninterrupted run, a run
    stopped after its first checkpoint, refused by another method, resumed, then exported
    again."""
    caplog.set_level(logging.INFO, logger="damt")
    config = write_config(tmp_path / "c.yaml", epochs=2, save_every=0, **RUNS[variant])
    train_in_process(files, config, tmp_path / "full")

    interrupted = tmp_path / "interrupted"
    train_in_process(files, config, interrupted, interrupt=True)
    assert load_checkpoint(interrupted / "checkpoints").epoch == 1
    # Another method's settings do not resume this checkpoint.
    other = sorted(RUNS)[(sorted(RUNS).index(variant) + 1) % len(RUNS)]
    wrong = write_config(tmp_path / "o.yaml", epochs=2, **RUNS[other])
    with pytest.raises(ValueError, match=r"cannot resume.*contrastive\.method"):
        train_in_process(files, wrong, interrupted)
    caplog.clear()
    train_in_process(files, config, interrupted)
    assert "resuming" in caplog.text

    # The resumed run continued the method's state: it ends where the uninterrupted one does.
    a = load_checkpoint(tmp_path / "full" / "checkpoints").model
    b = load_checkpoint(interrupted / "checkpoints").model
    assert a.keys() == b.keys()
    for prefix in STATE[variant]:
        assert any(k.startswith(prefix) for k in a), prefix
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    if variant == "ntxent_queue_ema":
        assert (a["queue.ids"] >= 0).all()  # 4 keys pushed per epoch, 6 slots: full after two
    if "teacher.encoder.swinViT.patch_embed.proj.weight" in a:
        key = "swinViT.patch_embed.proj.weight"
        assert not torch.equal(a[f"teacher.encoder.{key}"], a[f"network.encoder.{key}"])

    card = json.loads((interrupted / "model_card.json").read_text())
    p = card["pretraining"]
    assert p["contrastive_method"] == RUNS[variant].get("contrastive", {}).get("method", "ntxent")
    records = [json.loads(x) for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(math.isfinite(r["loss/contrastive"]) for r in records)
    assert "signal/contrastive_top1" in records[-1]
    _load_strictly(interrupted / "encoder.safetensors", card)
    weights = load_file(str(interrupted / "encoder.safetensors"))
    exported = "teacher" if variant == "dino" else "student"
    assert p["exported_encoder"] == exported
    source = "teacher.encoder" if exported == "teacher" else "network.encoder"
    for key, value in weights.items():
        assert torch.equal(value, b[f"{source}.swinViT.{key}"]), key
    if RUNS[variant].get("ema"):
        assert card["weights_ema"] == p["ema"]["file"] == "encoder_ema.safetensors"
        _load_strictly(interrupted / "encoder_ema.safetensors", card)
        for key, value in load_file(str(interrupted / "encoder_ema.safetensors")).items():
            assert torch.equal(value, b[f"teacher.encoder.swinViT.{key}"]), key
    else:
        assert card["weights_ema"] is None
        assert not (interrupted / "encoder_ema.safetensors").exists()

    # A finished run is exported again from its checkpoint alone, to the same files.
    exported_files = sorted(interrupted.glob("encoder*.safetensors"))
    before = {f.name: load_file(str(f)) for f in exported_files}
    caplog.clear()
    train_in_process(files, config, interrupted)
    assert "no training" in caplog.text, caplog.text
    for f in exported_files:
        after = load_file(str(f))
        assert all(torch.equal(after[k], v) for k, v in before[f.name].items()), f.name


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(RUNS))
def test_each_method_runs_on_two_gloo_ranks_with_identical_state(ddp_runs, variant):
    out = ddp_runs / variant
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for prefix in STATE[variant]:
        assert any(k.startswith(prefix) for k in ranks[0]), prefix
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    record = torch.load(out / "record0.pt")
    assert record["step"] == 3 and record["skipped_steps"] == 0
    assert math.isfinite(record["loss/contrastive"])
    if variant == "dino":
        assert float(ranks[0]["center.center"].abs().sum()) > 0  # moved, identically
