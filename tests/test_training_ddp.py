"""DDP on CPU processes (gloo): identical parameters, contrastive loss over ranks, failures."""

from __future__ import annotations

import signal
import subprocess
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from damt.training.distributed import DistEnv
from damt.training.loop import agreed_stop
from damt.training.losses import contrastive_logits, nt_xent
from tests.conftest import TORCHRUN, subprocess_env
from tests.test_training_losses import _nt_xent_reference
from tests.training_data import train_args, write_config, write_training_set


def _nt_xent_rank(rank: int, z1, z2, out: str) -> None:
    results = {}
    # Even split (what DistributedSampler gives every step) and an uneven one.
    for name, bounds in (("even", [0, 2, 4]), ("uneven", [0, 3, 5])):
        lo, hi = bounds[rank], bounds[rank + 1]
        a = z1[lo:hi].clone().requires_grad_(True)
        b = z2[lo:hi].clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # no deprecated collective
            loss, defined = nt_xent(a, b, 0.5)
            loss.backward()
        results[name] = {
            "loss": loss.detach(),
            "ga": a.grad,
            "gb": b.grad,
            "n": hi - lo,
            "defined": bool(defined),
        }
    torch.save(results, f"{out}/rank{rank}.pt")


def _collectives_rank(rank: int, store: str, data: dict, out: str) -> None:
    """One gloo rank of :func:`collectives`: each test's part in turn, in one process group."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    _nt_xent_rank(rank, *data["nt_xent"], out)
    _padded_epoch_rank(rank, *data["padded"], out)
    _stop_rank(rank, data["stop"], out)
    dist.destroy_process_group()


def _embeddings(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of ``n`` subjects (two views)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)


# Signals received by (rank 0, rank 1) at successive steps.
RECEIVED = [
    (None, None),
    (None, int(signal.SIGTERM)),
    (int(signal.SIGUSR1), None),
    (int(signal.SIGUSR1), int(signal.SIGTERM)),
]


@pytest.fixture(scope="module")
def collectives(tmp_path_factory):
    """The collective parts of this module's tests, on two gloo ranks of one ``mp.spawn``
    (one torch import per rank for all of them): their inputs and the folder of their
    results (``rankR.pt``, ``paddedR.pt``, ``stopR.pt``)."""
    out = tmp_path_factory.mktemp("collectives")
    data = {"nt_xent": _embeddings(0, 5), "padded": _embeddings(2, 3), "stop": RECEIVED}
    mp.spawn(_collectives_rank, args=(str(out / "store"), data, str(out)), nprocs=2)
    return data, out


def _results(out, saved_as: str) -> list:
    return [torch.load(out / f"{saved_as}{r}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_contrastive_loss_gathers_embeddings_across_ranks(collectives):
    (z1, z2), ranks = collectives[0]["nt_xent"], _results(collectives[1], "rank")

    # Even split: every anchor sees all 2N candidates, so the mean of the ranks' losses is the
    # single-process loss, and the ranks' gradients averaged as DDP does are its gradient.
    a, b = z1[:4].clone().requires_grad_(True), z2[:4].clone().requires_grad_(True)
    full, _ = nt_xent(a, b, 0.5)
    full.backward()
    even = [r["even"] for r in ranks]
    torch.testing.assert_close((even[0]["loss"] + even[1]["loss"]) / 2, full.detach())
    torch.testing.assert_close(torch.cat([even[0]["ga"], even[1]["ga"]]) / 2, a.grad)
    torch.testing.assert_close(torch.cat([even[0]["gb"], even[1]["gb"]]) / 2, b.grad)

    # Uneven split (a short last batch): still the global loss, weighted by anchors per rank.
    full5, _ = nt_xent(z1, z2, 0.5)
    uneven = [r["uneven"] for r in ranks]
    weighted = (uneven[0]["loss"] * 3 + uneven[1]["loss"] * 2) / 5
    torch.testing.assert_close(weighted, full5)
    assert all(r["defined"] for r in uneven)


def _padded_epoch_rank(rank: int, z1, z2, out: str) -> None:
    # Three subjects on two ranks: the sampler pads the epoch with a repeated subject.
    indices = list(DistributedSampler(range(3), num_replicas=2, rank=rank, shuffle=False))
    ids = torch.tensor(indices)
    # Embeddings depend on the subject alone, as views seeded by (seed, epoch, index) do.
    a = z1[ids].clone().requires_grad_(True)
    b = z2[ids].clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated collective
        c = contrastive_logits(a, b, 0.5, ids)
        loss, defined = nt_xent(a, b, 0.5, ids)
        loss.backward()
    torch.save(
        {
            "indices": indices,
            "loss": loss.detach(),
            "defined": bool(defined),
            "candidates": torch.isfinite(c.logits).sum(1),
            "blind": nt_xent(a.detach(), b.detach(), 0.5)[0],  # without the ids
        },
        f"{out}/padded{rank}.pt",
    )


@pytest.mark.slow
def test_padded_epoch_duplicates_are_no_negatives_across_ranks(collectives):
    (z1, z2), ranks = collectives[0]["padded"], _results(collectives[1], "padded")
    indices = ranks[0]["indices"] + ranks[1]["indices"]
    assert sorted(indices) == [0, 0, 1, 2]  # subject 0 on both ranks
    # The global batch in rank order, and the reference that knows which rows are one subject.
    ids = torch.tensor(indices)
    expected = _nt_xent_reference(z1[ids], z2[ids], 0.5, indices)
    mean = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
    assert float(mean) == pytest.approx(expected, rel=1e-5)
    # Subject 0's anchors lose the other copy's two views as negatives: 8 - 1 - 2.
    for rank in ranks:
        for row, subject in enumerate(rank["indices"] * 2):
            assert int(rank["candidates"][row]) == (5 if subject == 0 else 7)
    assert all(r["defined"] for r in ranks)
    # Counting the copy as a negative (no ids) gives another loss: the mask matters here.
    blind = (ranks[0]["blind"] + ranks[1]["blind"]) / 2
    assert abs(float(blind) - expected) > 1e-3


def _stop_rank(rank: int, received: list, out: str) -> None:
    env = DistEnv(rank, 2, rank, 2, torch.device("cpu"))
    answers = [agreed_stop(pair[rank], env) for pair in received]
    torch.save(answers, f"{out}/stop{rank}.pt")


@pytest.mark.slow
def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_step(collectives):
    """Issue 30, case 1: a signal that reached one trainer only (or two different ones) is the
    same decision on both ranks, so no rank waits for a step the other never takes."""
    expected = [None, "SIGTERM", "SIGUSR1", "SIGTERM"]
    assert _results(collectives[1], "stop") == [expected, expected]
    alone = DistEnv(0, 1, 0, 1, torch.device("cpu"))
    assert agreed_stop(int(signal.SIGUSR1), alone) == "SIGUSR1"
    assert agreed_stop(None, alone) is None


@pytest.mark.slow
def test_two_gloo_ranks_keep_identical_parameters(ddp_runs):
    ranks = [load_file(str(ddp_runs / "damt" / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    record = torch.load(ddp_runs / "damt" / "record0.pt")
    assert record["step"] == 2 * 3  # 5 subjects padded to 6, 3 per rank, batch 1
    assert record["skipped_steps"] == 0
    # The ranks trained: the task log-variances (initialised at 0) moved, identically.
    log_vars = [ranks[0][k] for k in ranks[0] if k.startswith("balancer.log_vars.")]
    assert len(log_vars) == 7 and all(float(v) != 0.0 for v in log_vars)


@pytest.mark.slow
def test_a_failing_rank_stops_the_whole_job(tmp_path):
    files = write_training_set(tmp_path / "data", n_subjects=4)
    (files.root / "subjects" / "sub-02" / "cache" / "image.npy").write_bytes(b"truncated")
    config = write_config(tmp_path / "c.yaml", epochs=2)
    cmd = [
        *TORCHRUN,
        "--nproc_per_node=2",
        "-m",
        "damt",
        *train_args(files, config, tmp_path / "run"),
    ]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "subject sub-02: cannot read its cache" in proc.stderr
    assert elapsed < 120, f"the job took {elapsed:.0f} s to stop"
