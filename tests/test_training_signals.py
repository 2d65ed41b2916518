"""Per-task learning signals: each against a hand computation and against its chance level."""

from __future__ import annotations

import pytest
import torch

from damt.training import signals
from damt.training.losses import contrastive_logits, mim_l1


def _epoch(steps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """What the loop's meter does: sum each key over the steps (float64)."""
    sums: dict[str, torch.Tensor] = {}
    for stats in steps:
        for key, value in stats.items():
            sums[key] = sums.get(key, 0) + value.double()
    return sums


def test_classification_accuracy_and_majority_chance():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    target = torch.tensor([0, 1, 1, 1])  # 2 right; class 1 is 3 of 4
    sums = _epoch([signals.step_classification("location", logits, target, 3)])
    out = signals.epoch_signals(sums, ("location",), n_rotations=10)
    assert out["signal/location_accuracy"] == pytest.approx(0.5)
    assert out["chance/location_accuracy"] == pytest.approx(0.75)
    rot = _epoch([signals.step_classification("rotation", logits, target, 10)])
    assert (
        signals.epoch_signals(rot, ("rotation",), n_rotations=10)["chance/rotation_accuracy"] == 0.1
    )


def test_contrastive_top1_and_its_chance():
    z = torch.eye(4)
    # Perfect views: every positive is the nearest candidate.
    c = contrastive_logits(z, z.clone(), 0.5)
    out = signals.epoch_signals(
        _epoch([signals.step_contrastive(c.logits, c.positive)]), ("contrastive",), 10
    )
    assert out["signal/contrastive_top1"] == 1.0
    assert out["chance/contrastive_top1"] == pytest.approx(1 / 7)  # 8 candidates less itself
    # Second views that match another subject: never retrieved.
    c = contrastive_logits(z, z[[1, 2, 3, 0]], 0.5)
    stats = signals.step_contrastive(c.logits, c.positive)
    assert int(stats["contrastive/correct"]) == 0


def test_atlas_dice_over_present_classes():
    target = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 2]])  # class 3 absent
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 0, 1, 2, 2, 2, 2, 2]]), 4)
    logits = logits.permute(0, 2, 1).float()  # (B, K, N)
    stats = signals.step_atlas(logits, target, stride=1)
    out = signals.epoch_signals(_epoch([stats]), ("atlas",), 10)
    dice = [1.0, 2 * 1 / (1 + 2), 2 * 4 / (5 + 4)]
    assert out["signal/atlas_dice"] == pytest.approx(sum(dice) / 3)
    assert out["chance/atlas_dice"] == pytest.approx(1 / 3)
    # By default every second voxel along each axis counts.
    for key, value in signals.step_atlas(logits, target).items():
        torch.testing.assert_close(
            value, signals.step_atlas(logits[..., ::2], target[..., ::2], 1)[key]
        )
    assert int(signals.step_atlas(logits, target)["atlas/target"].sum()) == 4


def test_regression_r2_is_one_when_exact_and_zero_for_the_mean():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 3, generator=g)
    target[0, 1] = float("nan")
    batches = [slice(0, 2), slice(2, 4), slice(4, 6)]
    exact = _epoch([signals.step_regression("radiomics", target[b], target[b]) for b in batches])
    assert signals.epoch_signals(exact, ("radiomics",), 10)["signal/radiomics_r2"] == 1.0
    mean = torch.nanmean(target, dim=0).expand(2, 3)
    at_mean = _epoch([signals.step_regression("radiomics", mean, target[b]) for b in batches])
    out = signals.epoch_signals(at_mean, ("radiomics",), 10)
    assert out["signal/radiomics_r2"] == pytest.approx(0.0, abs=1e-9)
    assert out["chance/radiomics_r2"] == 0.0
    zero = _epoch([signals.step_regression("radiomics", mean * 0, target[b]) for b in batches])
    assert signals.epoch_signals(zero, ("radiomics",), 10)["signal/radiomics_r2"] < 0.0


def test_mim_ratio_against_predicting_the_mean():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 32, 32, 32, generator=g)
    mask = torch.rand(2, 2, 2, 2, generator=g) < 0.75
    mask[:, 0, 0, 0] = True
    baseline = signals.mean_baseline_l1(image, mask)
    # The baseline is mim_l1 of a reconstruction that is each view's masked-patch mean.
    voxels = mask.repeat_interleave(16, 1).repeat_interleave(16, 2).repeat_interleave(16, 3)
    means = torch.stack([image[i, 0][voxels[i]].mean() for i in range(2)])
    recon = means[:, None, None, None, None].expand_as(image)
    torch.testing.assert_close(baseline, mim_l1(recon, image, mask))
    sums = {"mim/l1": mim_l1(image, image, mask) + baseline, "mim/baseline_l1": 2 * baseline}
    out = signals.epoch_signals(_epoch([sums]), ("mim",), 10)
    assert out["signal/mim_l1_ratio"] == pytest.approx(0.5)
    assert out["chance/mim_l1_ratio"] == 1.0


def test_tasks_without_counted_steps_report_none():
    out = signals.epoch_signals({}, ("rotation", "atlas", "mim"), 10)
    names = ("rotation_accuracy", "atlas_dice", "mim_l1_ratio")
    assert out == {f"{kind}/{name}": None for kind in ("signal", "chance") for name in names}


def test_loss_curve_figure_has_the_signals_against_chance(tmp_path):
    import json

    from damt.training.report import plot_training

    records = [
        {
            "epoch": e,
            "loss": 5.0 - e,
            "loss/atlas": 2.0 - 0.1 * e,
            "weight/atlas": 1.0 + 0.1 * e,
            "signal/atlas_dice": 0.2 + 0.1 * e,
            "chance/atlas_dice": 0.2,
            "signal/rotation_accuracy": None,
            "chance/rotation_accuracy": None,
        }
        for e in range(3)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curves, weights = tmp_path / "c.png", tmp_path / "w.png"
    assert plot_training(tmp_path, curves, weights) == 3
    import matplotlib.image

    # Two loss panels on the first row, one signal panel on the second: 2 rows of 2.
    height, width = matplotlib.image.imread(curves).shape[:2]
    assert (height, width) == (round(2 * 2.8 * 90), round(2 * 3.6 * 90))
    assert weights.stat().st_size > 1000
