"""DDP on CPU processes (gloo): identical parameters, contrastive loss over ranks, failures."""

from __future__ import annotations

import signal
import subprocess
import sys
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
from tests.conftest import REPO, subprocess_env
from tests.test_training_losses import _nt_xent_reference
from tests.training_data import train_args, write_config, write_training_set

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]


def _nt_xent_rank(rank: int, store: str, z1, z2, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
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
    dist.destroy_process_group()


def _two_ranks(rank_fn, tmp_path, seed: int, n: int, saved_as: str):
    """Embeddings of ``n`` subjects (two views), ``rank_fn`` on two gloo ranks, their results."""
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    mp.spawn(rank_fn, args=(str(tmp_path / "store"), z1, z2, str(tmp_path)), nprocs=2)
    return z1, z2, [torch.load(tmp_path / f"{saved_as}{r}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_contrastive_loss_gathers_embeddings_across_ranks(tmp_path):
    z1, z2, ranks = _two_ranks(_nt_xent_rank, tmp_path, seed=0, n=5, saved_as="rank")

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


def _padded_epoch_rank(rank: int, store: str, z1, z2, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
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
    dist.destroy_process_group()


@pytest.mark.slow
def test_padded_epoch_duplicates_are_no_negatives_across_ranks(tmp_path):
    z1, z2, ranks = _two_ranks(_padded_epoch_rank, tmp_path, seed=2, n=3, saved_as="padded")
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


def _stop_rank(rank: int, store: str, received: list, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    env = DistEnv(rank, 2, rank, 2, torch.device("cpu"))
    answers = [agreed_stop(pair[rank], env) for pair in received]
    torch.save(answers, f"{out}/stop{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Issue 30, case 1: a signal that reached one trainer only (or two different ones) is the
    same decision on both ranks, so no rank waits for a step the other never takes."""
    received = [
        (None, None),
        (None, int(signal.SIGTERM)),
        (int(signal.SIGUSR1), None),
        (int(signal.SIGUSR1), int(signal.SIGTERM)),
    ]
    mp.spawn(_stop_rank, args=(str(tmp_path / "store"), received, str(tmp_path)), nprocs=2)
    expected = [None, "SIGTERM", "SIGUSR1", "SIGTERM"]
    assert [torch.load(tmp_path / f"stop{r}.pt") for r in (0, 1)] == [expected, expected]
    alone = DistEnv(0, 1, 0, 1, torch.device("cpu"))
    assert agreed_stop(int(signal.SIGUSR1), alone) == "SIGUSR1"
    assert agreed_stop(None, alone) is None


@pytest.mark.slow
def test_two_gloo_ranks_keep_identical_parameters(tmp_path):
    files = write_training_set(tmp_path / "data", n_subjects=5)
    config = write_config(tmp_path / "c.yaml", epochs=2, batch_size_per_gpu=1)
    cmd = [
        *TORCHRUN,
        "--nproc_per_node=2",
        str(REPO / "tests" / "ddp_worker.py"),
        str(config),
        str(files.root),
        str(tmp_path),
    ]
    proc = subprocess.run(
        cmd, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    record = torch.load(tmp_path / "record0.pt")
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
