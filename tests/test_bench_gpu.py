"""bench/gpu.py on a CPU: the GPU benchmark's code runs (tiny preset), so it cannot rot unseen.

Its ``torchrun`` section (a real ``damt train`` under torchrun, SIGKILLed after its first
checkpoint, resumed and exported) is left out: the trainer's tests run that path for real
(tests/test_training_nodes.py::test_two_nodes_train_get_killed_resume_and_export,
tests/test_training_loop.py::test_resume_after_a_kill_matches_an_uninterrupted_run).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--tiny", "--out", str(out),
         "--budget-s", "1500", "--sections", "step,profile,loader,fed"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_section: dict[str, list[dict]] = {}
    for row in rows:
        by_section.setdefault(row["section"], []).append(row)
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    # Both attentions measured, with model FLOPs; the CPU has no MFU or GPU memory.
    steps = by_section["step"]
    assert {r["attention"] for r in steps} == {"monai", "sdpa"}
    assert all(r["samples_per_s"] > 0 and r["tflop_per_step"] > 0 for r in steps)
    assert all(r["mfu"] is None and r["peak_mem_gib"] is None for r in steps)
    assert by_section["profile"][0]["top"]
    assert (out / "profile.txt").read_text().startswith(by_section["chosen"][0]["config"])
    assert {r["num_workers"] for r in by_section["loader"]} == {0, 1}
    assert 0 <= by_section["fed"][0]["gpu_idle_share"] <= 1
    assert "torchrun" not in by_section  # not asked for
    assert "compile" not in by_section  # compiling takes minutes on a CPU: GPU only
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"samples_per_s=\S+ mfu=n/a peak_mem_gb=n/a loader_samples_per_s=\S+", last
    ), last
