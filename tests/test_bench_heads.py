"""bench/heads.py: the view-defined heads memorise a fixed batch of the session's upstream, and
the atlas classes merge by size (its diagnosis of the atlas head).

Rotation, location and contrastive (through the two-layer projector) are each trained alone on
one batch of four training subjects' views, drawn once by the trainer's own dataset; each must
reach its level (top-1 ≥ 0.95) within the steps bench/RESULTS.md measured, with room to spare.
The other heads' fixed-batch runs, and the linear contrastive head that stays at chance, are in
bench/RESULTS.md ("Pretext heads on a fixed batch"): they take minutes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

import pytest
import torch
import yaml

from tests.conftest import REPO, Workdir

# Measured first steps at the level: contrastive (mlp) 1, location 4, rotation 18.
STEPS = 40


@pytest.fixture(scope="module")
def heads() -> ModuleType:
    """bench/heads.py, imported (run in this process: no second torch and MONAI import)."""
    spec = importlib.util.spec_from_file_location("bench_heads", REPO / "bench" / "heads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_heads(heads: ModuleType, monkeypatch, capsys, *args: str) -> list[str]:
    """``bench/heads.py ARGS`` from the repository root; its printed lines."""
    monkeypatch.chdir(REPO)  # the config's relative paths (the label table)
    monkeypatch.setattr(sys, "argv", ["heads.py", *args])
    heads.main()
    return capsys.readouterr().out.strip().splitlines()


def test_atlas_classes_merge_by_size_with_the_small_ones_together(heads):
    # Voxels per class over both atlases: 0: 6, 3: 4, 1: 3, 2: 2, 4: 1.
    batch = {
        "global_atlas": torch.tensor([[0, 0, 0, 3, 3, 1, 1, 2]]),
        "local_atlas": torch.tensor([[0, 0, 0, 3, 3, 1, 2, 4]]),
    }
    assert heads.merge_atlas_classes(batch, 3) == 3
    assert batch["global_atlas"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert batch["local_atlas"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]


@pytest.mark.slow
def test_view_defined_heads_memorise_a_fixed_batch(
    heads, upstream: Workdir, tmp_path, monkeypatch, capsys
):
    config = upstream.override()
    config["pretrain"] = {**config["pretrain"], "contrastive": {"projector": "mlp"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = run_heads(
        heads, monkeypatch, capsys, "--results", str(upstream.results),
        "--config", str(tmp_path / "config.yaml"), "--tasks", "contrastive,location,rotation",
        "--no-joint", "--steps", str(STEPS), "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert out[-1] == "heads_reached=3/3", out
    lines = (tmp_path / "out" / "heads.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for task in ("contrastive", "location", "rotation"):
        history = [r[task] for r in rows if r["run"] == task]
        # From chance (a random head) to the level: learnt, not given.
        assert history[0] < 0.95 <= history[-1], (task, history)


@pytest.mark.slow
def test_fresh_views_are_scored_on_the_held_out_subjects(
    heads, upstream: Workdir, tmp_path, monkeypatch, capsys
):
    """``--fresh``: trains on fresh views and scores the held-out subjects' views against the
    chance level (its measurement: bench/RESULTS.md; here two steps, for the code path)."""
    out = run_heads(
        heads, monkeypatch, capsys, "--results", str(upstream.results),
        "--config", str(upstream.config), "--tasks", "rotation", "--fresh", "--steps", "2",
        "--eval-every", "1", "--eval-draws", "2", "--out", str(tmp_path),
    )  # fmt: skip
    assert out[0] == "4 training subjects, 2 held out", out
    rows = [json.loads(line) for line in (tmp_path / "fresh.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    # Two held-out subjects, two draws, a global and a local view each: multiples of 1/8.
    assert all(r["rotation_chance"] == pytest.approx(0.1) for r in rows)
    assert all((r["rotation"] * 8).is_integer() for r in rows), rows
