"""Losses: masking of missing targets, MIM on masked patches, NT-Xent, task weighting, schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from damt.training.losses import (
    EqualWeighting,
    UncertaintyWeighting,
    masked_l1,
    mim_l1,
    nt_xent,
)
from damt.training.schedules import cosine_schedule


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


def _nt_xent_reference(z1, z2, tau):
    """SimCLR's loss written out pair by pair."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i]
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


def test_uncertainty_weighting_formula_and_gradients():
    weighting = UncertaintyWeighting(("a", "b", "c"))
    with torch.no_grad():
        weighting.log_vars["a"].fill_(0.5)
        weighting.log_vars["b"].fill_(-1.0)
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0), "c": torch.tensor(7.0)}
    valid = {"a": torch.tensor(True), "b": torch.tensor(True), "c": torch.tensor(False)}
    total = weighting(losses, valid)
    expected = math.exp(-0.5) * 2 + 0.5 + math.exp(1.0) * 3 - 1.0
    assert total.item() == pytest.approx(expected)
    total.backward()
    # d/ds (e^-s L + s) = 1 - e^-s L; the invalid task gets no push at all.
    assert float(weighting.log_vars["a"].grad) == pytest.approx(1 - math.exp(-0.5) * 2)
    assert float(weighting.log_vars["c"].grad) == 0.0
    assert set(weighting.state_dict()) == {"log_vars.a", "log_vars.b", "log_vars.c"}
    assert weighting.weights()["b"] == pytest.approx(math.e)


def test_uncertainty_weighting_settles_at_the_loss_scale():
    # The optimum of e^-s L + s is s = log L: a task 100× larger ends up weighted 100× less.
    weighting = UncertaintyWeighting(("small", "large"))
    opt = torch.optim.SGD(weighting.parameters(), lr=0.1)
    losses = {"small": torch.tensor(0.5), "large": torch.tensor(50.0)}
    valid = dict.fromkeys(losses, torch.tensor(True))
    for _ in range(2000):
        opt.zero_grad()
        weighting(losses, valid).backward()
        opt.step()
    w = weighting.weights()
    assert w["small"] / w["large"] == pytest.approx(100.0, rel=1e-3)


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
