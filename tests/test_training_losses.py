"""Losses: masking of missing targets, MIM on masked patches, NT-Xent, task weighting, schedules."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from damt.training.losses import (
    FIXED_WEIGHTS,
    EqualWeighting,
    FixedWeighting,
    UncertaintyWeighting,
    contrastive_logits,
    make_balancer,
    masked_l1,
    mim_l1,
    nt_xent,
)
from damt.training.schedules import apply_schedules, cosine_schedule
from damt.training.step import BALANCER_LR, param_groups


def test_masked_l1_ignores_missing_entries():
    pred = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    target = torch.tensor([[1.5, float("nan"), 2.0], [float("nan")] * 3])
    loss, count = masked_l1(pred, target)
    assert int(count) == 2
    assert loss.item() == pytest.approx((0.5 + 1.0) / 2)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[1].abs().sum() == 0 and pred.grad[0, 1] == 0


def test_all_missing_batch_gives_zero_loss_and_zero_gradient():
    pred = torch.randn(3, 4, requires_grad=True)
    loss, count = masked_l1(pred, torch.full((3, 4), float("nan")))
    assert int(count) == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_mim_l1_is_the_mean_over_masked_voxels():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 32, 32, 32, generator=g)
    recon = torch.rand(2, 1, 32, 32, 32, generator=g)
    mask = torch.rand(2, 4, 4, 4, generator=g) < 0.75
    voxels = mask.repeat_interleave(8, 1).repeat_interleave(8, 2).repeat_interleave(8, 3)
    expected = (recon - image).abs()[:, 0][voxels].mean()
    torch.testing.assert_close(mim_l1(recon, image, mask), expected)
    # Unmasked voxels do not count.
    recon2 = recon.clone()
    recon2[:, 0][~voxels] = 100.0
    torch.testing.assert_close(mim_l1(recon2, image, mask), expected)


def _nt_xent_reference(z1, z2, tau, ids=None):
    """SimCLR's loss written out pair by pair; candidates of the anchor's own subject (other
    than its positive) are no negatives.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    ids = list(range(n)) if ids is None else list(ids)
    subject = ids + ids
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [
            math.exp(float(z[i] @ z[k]) / tau)
            for k in range(2 * n)
            if k == j or subject[k] != subject[i]
        ]
        total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / sum(sims))
    return total / (2 * n)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_nt_xent_matches_the_definition_for_any_batch_size(n):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    loss, defined = nt_xent(z1, z2, 0.5)
    assert bool(defined)
    assert float(loss) == pytest.approx(_nt_xent_reference(z1, z2, 0.5), rel=1e-5)


def test_nt_xent_with_one_pair_is_undefined():
    loss, defined = nt_xent(torch.randn(1, 8), torch.randn(1, 8), 0.5)
    assert not bool(defined) and float(loss) == pytest.approx(0.0, abs=1e-6)


def test_duplicate_subjects_are_no_negatives():
    # Subject 7 twice (a padded epoch): identical embeddings, as views seeded by the index give.
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    z1[3], z2[3] = z1[0], z2[0]
    ids = torch.tensor([7, 3, 5, 7])
    loss, defined = nt_xent(z1, z2, 0.5, ids)
    assert bool(defined)
    assert float(loss) == pytest.approx(_nt_xent_reference(z1, z2, 0.5, ids.tolist()), rel=1e-5)
    # Without the ids the duplicate's views count as negatives: another (larger) loss.
    assert float(nt_xent(z1, z2, 0.5)[0]) > float(loss) + 0.05
    c = contrastive_logits(z1, z2, 0.5, ids)
    candidates = torch.isfinite(c.logits).sum(1)
    # 8 columns, less the anchor itself, less the duplicate's two views for subject 7.
    assert candidates.tolist() == [5, 7, 7, 5] * 2
    # One subject only: nothing to contrast.
    _, defined = nt_xent(z1[[0, 3]], z2[[0, 3]], 0.5, ids[[0, 3]])
    assert not bool(defined)


def test_uncertainty_terms_follow_the_likelihood_of_each_task_type():
    # Classification (softmax likelihood, Kendall eq. 10): exp(-s) L + s/2.
    # L1 regression (Laplace likelihood with scale b = e^s): exp(-s) L + s.
    tasks = ("rotation", "location", "contrastive", "atlas", "morphometry", "radiomics", "mim")
    weighting = UncertaintyWeighting(tasks)
    s = dict(zip(tasks, (0.5, -1.0, 0.2, 1.5, -2.0, 0.7, 0.3), strict=True))
    loss = dict(zip(tasks, (2.0, 3.0, 1.2, 0.8, 0.4, 0.9, 0.05), strict=True))
    with torch.no_grad():
        for t in tasks:
            weighting.log_vars[t].fill_(s[t])
    valid = {t: torch.tensor(t != "radiomics") for t in tasks}  # radiomics drops out
    total = weighting({t: torch.tensor(v) for t, v in loss.items()}, valid)
    classification = ("rotation", "location", "contrastive", "atlas")
    expected = sum(
        math.exp(-s[t]) * loss[t] + (0.5 if t in classification else 1.0) * s[t]
        for t in tasks
        if t != "radiomics"
    )
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    for t in tasks:
        factor = 0.5 if t in classification else 1.0
        grad = 0.0 if t == "radiomics" else factor - math.exp(-s[t]) * loss[t]
        assert float(weighting.log_vars[t].grad) == pytest.approx(grad, rel=1e-5, abs=1e-7), t
        # The balance point, where that gradient vanishes.
        assert weighting.balance_point(t, loss[t]) == pytest.approx(factor / loss[t])
        assert weighting.weights()[t] == pytest.approx(math.exp(-s[t]))
    assert set(weighting.state_dict()) == {f"log_vars.{t}" for t in tasks}


def test_uncertainty_weighting_settles_at_the_balance_point_of_each_form():
    # Constant losses, 100× apart: the weights settle at factor / L.
    weighting = UncertaintyWeighting(("morphometry", "mim", "atlas"))
    opt = torch.optim.SGD(weighting.parameters(), lr=0.05)
    losses = {t: torch.tensor(v) for t, v in (("morphometry", 0.5), ("mim", 50.0), ("atlas", 2.0))}
    valid = dict.fromkeys(losses, torch.tensor(True))
    for _ in range(3000):
        opt.zero_grad()
        weighting(losses, valid).backward()
        opt.step()
    w = weighting.weights()
    assert w["morphometry"] / w["mim"] == pytest.approx(100.0, rel=1e-3)
    assert w["morphometry"] == pytest.approx(1 / 0.5, rel=1e-3)
    assert w["atlas"] == pytest.approx(1 / (2 * 2.0), rel=1e-3)


class _Toy(nn.Module):
    """Three tasks of a linear model on fresh batches of two: a 10-class classification with
    soft labels, and two L1 regressions whose Laplace noise scales differ by 100×.
    """

    noise: ClassVar[dict[str, float]] = {"morphometry": 0.05, "mim": 5.0}

    def __init__(self, balancing: str = "uncertainty") -> None:
        super().__init__()
        self.heads = nn.ModuleDict(
            {"morphometry": nn.Linear(4, 8), "mim": nn.Linear(4, 8), "rotation": nn.Linear(4, 10)}
        )
        self.balancer = make_balancer(balancing, ("rotation", "morphometry", "mim"))

    def losses(self, g: torch.Generator, truth: dict) -> dict[str, torch.Tensor]:
        x = torch.randn(2, 4, generator=g)
        out = {}
        for task, scale in self.noise.items():
            uniform = torch.rand(2, 8, generator=g) - 0.5
            laplace = -scale * torch.sign(uniform) * torch.log1p(-2 * uniform.abs())
            out[task] = (self.heads[task](x) - (x @ truth[task] + laplace)).abs().mean()
        labels = torch.multinomial(F.softmax(x @ truth["rotation"], 1), 1, generator=g)[:, 0]
        out["rotation"] = F.cross_entropy(self.heads["rotation"](x), labels)
        return out


def test_learned_weights_reach_the_balance_point_within_a_few_hundred_steps():
    """The trainer's optimiser setup on a toy problem: AdamW with param_groups, the network on
    a warmup + cosine schedule, the balancer at its constant default learning rate.
    """
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    truth = {
        "morphometry": torch.randn(4, 8, generator=g),
        "mim": torch.randn(4, 8, generator=g),
        "rotation": torch.randn(4, 10, generator=g),
    }
    toy = _Toy()
    optimizer = torch.optim.AdamW(param_groups(toy), lr=1e-2)
    steps = 600
    lr = cosine_schedule(1e-2, 1e-4, epochs=steps // 10, iters_per_epoch=10, warmup_epochs=5)
    wd = cosine_schedule(0.04, 0.4, epochs=steps // 10, iters_per_epoch=10)
    history = []
    for step in range(steps):
        apply_schedules(optimizer, lr[step], wd[step])
        losses = toy.losses(g, truth)
        optimizer.zero_grad()
        toy.balancer(losses, dict.fromkeys(losses, torch.tensor(True))).backward()
        optimizer.step()
        history.append({t: float(v.detach()) for t, v in losses.items()})
    balancer_group = optimizer.param_groups[-1]
    assert balancer_group["balancer"] and balancer_group["lr"] == BALANCER_LR
    assert balancer_group["weight_decay"] == 0.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr[steps - 1])
    weights = toy.balancer.weights()
    for task in ("rotation", "morphometry", "mim"):
        recent = np.mean([h[task] for h in history[-100:]])
        target = toy.balancer.balance_point(task, recent)
        assert weights[task] == pytest.approx(target, rel=0.15), (task, weights[task], target)
    # The regression weights ended ~100× apart, as their noise scales; they started equal.
    assert 60 < weights["morphometry"] / weights["mim"] < 160


def test_fixed_weighting_uses_the_original_weights():
    assert FIXED_WEIGHTS == {
        "rotation": 1.0, "location": 1.0, "contrastive": 1.0, "atlas": 0.5,
        "morphometry": 5.0, "radiomics": 5.0, "mim": 1.0,
    }  # fmt: skip
    fixed = make_balancer("fixed", ("atlas", "radiomics", "mim"))
    assert isinstance(fixed, FixedWeighting) and not list(fixed.parameters())
    total = fixed(
        {"atlas": torch.tensor(2.0), "radiomics": torch.tensor(0.3), "mim": torch.tensor(0.1)},
        {"atlas": torch.tensor(True), "radiomics": torch.tensor(True), "mim": torch.tensor(0)},
    )
    assert float(total) == pytest.approx(0.5 * 2.0 + 5 * 0.3)
    assert fixed.weights() == {"atlas": 0.5, "radiomics": 5.0, "mim": 1.0}
    with pytest.raises(ValueError, match="unknown loss balancing"):
        make_balancer("learned", ("atlas",))


def test_equal_weighting_sums_valid_tasks():
    eq = EqualWeighting(("a", "b"))
    total = eq(
        {"a": torch.tensor(1.5), "b": torch.tensor(4.0)},
        {"a": torch.tensor(True), "b": torch.tensor(False)},
    )
    assert float(total) == 1.5


def test_cosine_schedule_warms_up_then_decays_to_the_end_value():
    s = cosine_schedule(1.0, 0.01, epochs=10, iters_per_epoch=5, warmup_epochs=2, warmup_start=1e-3)
    assert len(s) == 50
    assert s[0] == pytest.approx(1e-3)
    assert np.all(np.diff(s[:10]) > 0)
    assert s[10] == pytest.approx(1.0)
    assert np.all(np.diff(s[10:]) <= 0)
    assert s[-1] == pytest.approx(0.01)
    wd = cosine_schedule(0.04, 0.4, epochs=3, iters_per_epoch=4)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="does not fit"):
        cosine_schedule(1.0, 0.0, epochs=2, iters_per_epoch=3, warmup_epochs=2)
