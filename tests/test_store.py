"""The result store: per-subject reuse, isolation of failures, parallel workers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from damt.results import read_summaries
from damt.stages.store import (
    FAILED,
    OK,
    Stage,
    SubjectError,
    SubjectResult,
    SubjectTask,
    read_result,
    run_tasks,
    stage_dir,
)
from tests.conftest import run_stage_shards


class CountStage(Stage):
    """Toy stage: writes the length of the subject's input file; 'bad*' raise, 'boom*' crash."""

    name = "count"

    def __init__(self, factor: int = 1):
        self.factor = factor

    def params(self) -> dict:
        return {"factor": self.factor}

    def input_files(self, task: SubjectTask) -> list[Path]:
        return [task.path / "data.txt"]

    def compute(self, task: SubjectTask, workdir: Path) -> SubjectResult:
        (workdir / "partial.txt").write_text("half done")
        if task.subject_id.startswith("bad"):
            raise SubjectError("bad_data", f"{task.subject_id} has bad data")
        if task.subject_id.startswith("boom"):
            raise ZeroDivisionError("division by zero")
        n = len((task.path / "data.txt").read_text()) * self.factor
        (workdir / "n.txt").write_text(str(n))
        return SubjectResult(task.subject_id, OK, outputs={"n": "n.txt"}, info={"n": n})


def make_tasks(root: Path, names) -> list[SubjectTask]:
    tasks = []
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "data.txt").write_text(name)
        tasks.append(SubjectTask(name, root / name))
    return tasks


def test_stored_results_are_reused_untouched(tmp_path: Path):
    tasks = make_tasks(tmp_path / "in", ["s1", "s22"])
    out = tmp_path / "out"
    first = run_tasks(CountStage(), tasks, out)
    assert [(r.status, reused) for r, reused in first] == [(OK, False), (OK, False)]
    assert (stage_dir(out, "s22", "count") / "n.txt").read_text() == "3"
    files = list((out / "subjects").rglob("*"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in files}

    second = run_tasks(CountStage(), tasks + make_tasks(tmp_path / "in", ["s333"]), out)
    assert [reused for _, reused in second] == [True, True, False]
    assert {
        p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in files
    } == before


def test_changed_input_or_params_recompute(tmp_path: Path):
    tasks = make_tasks(tmp_path / "in", ["s1", "s2"])
    out = tmp_path / "out"
    run_tasks(CountStage(), tasks, out)
    (tasks[0].path / "data.txt").write_text("longer text")
    res = run_tasks(CountStage(), tasks, out)
    assert [reused for _, reused in res] == [False, True]
    assert res[0][0].info["n"] == 11
    res = run_tasks(CountStage(factor=2), tasks, out)
    assert [reused for _, reused in res] == [False, False]
    res = run_tasks(CountStage(factor=2), tasks, out, force=True)
    assert [reused for _, reused in res] == [False, False]


def test_bad_subject_fails_with_reason_and_others_go_on(tmp_path: Path):
    tasks = make_tasks(tmp_path / "in", ["bad1", "boom1", "s1"])
    out = tmp_path / "out"
    res = {r.subject_id: r for r, _ in run_tasks(CountStage(), tasks, out)}
    assert res["s1"].status == OK
    assert (res["bad1"].status, res["bad1"].reason) == (FAILED, "bad_data")
    assert res["bad1"].detail == "bad1 has bad data"
    assert (res["boom1"].status, res["boom1"].reason) == (FAILED, "error:ZeroDivisionError")
    # Failed subjects keep no partial outputs; the result file says why.
    assert sorted(p.name for p in stage_dir(out, "bad1", "count").iterdir()) == ["result.json"]
    assert read_result(out, "bad1", "count").reason == "bad_data"
    # Data problems are stored, unexpected errors are retried on the next run.
    again = {r.subject_id: reused for r, reused in run_tasks(CountStage(), tasks, out)}
    assert again == {"bad1": True, "boom1": False, "s1": True}


def test_workers_give_the_same_results(tmp_path: Path):
    names = [f"s{i}" for i in range(6)] + ["bad9"]
    tasks = make_tasks(tmp_path / "in", names)
    serial = run_tasks(CountStage(), tasks, tmp_path / "a")
    parallel = run_tasks(CountStage(), tasks, tmp_path / "b", workers=2)
    strip = [(r.subject_id, r.status, r.reason, r.info, r.key) for r, _ in serial]
    assert strip == [(r.subject_id, r.status, r.reason, r.info, r.key) for r, _ in parallel]


class ThreadsStage(CountStage):
    """Records the thread count its setup saw."""

    name = "threads"
    threads = 2

    def setup(self) -> None:
        self.setup_threads = self.threads

    def compute(self, task: SubjectTask, workdir: Path) -> SubjectResult:
        return SubjectResult(task.subject_id, OK, info={"threads": self.setup_threads})


def test_pool_workers_run_single_threaded(tmp_path: Path):
    tasks = make_tasks(tmp_path / "in", ["s0", "s1", "s2"])
    serial = run_tasks(ThreadsStage(), tasks, tmp_path / "a")
    pooled = run_tasks(ThreadsStage(), tasks, tmp_path / "b", workers=2)
    assert [r.info["threads"] for r, _ in serial] == [2, 2, 2]
    assert [r.info["threads"] for r, _ in pooled] == [1, 1, 1]


def test_run_shard_reads_membership_and_writes_summary(tmp_path: Path):
    root = tmp_path / "subjects"
    for name in ("s1", "bad2"):
        (root / name / "mri").mkdir(parents=True)
        for f in ("brainmask.mgz", "aparc+aseg.mgz"):
            (root / name / "mri" / f).write_bytes(b"x")
        (root / name / "data.txt").write_text(name)
    out = tmp_path / "results"
    (summary,) = run_stage_shards(CountStage(), root, out, n_shards=1)
    back = read_summaries([summary])
    assert list(back.subject_id) == ["bad2", "s1"]
    assert list(back.status) == [FAILED, OK]
    assert back.outputs[1] == {"n": str(stage_dir(out, "s1", "count") / "n.txt")}
    assert back.reused.tolist() == [False, False]
    assert json.loads((stage_dir(out, "s1", "count") / "result.json").read_text())["key"]


def test_interrupted_computation_leaves_previous_result(tmp_path: Path, monkeypatch):
    tasks = make_tasks(tmp_path / "in", ["s1"])
    out = tmp_path / "out"
    run_tasks(CountStage(), tasks, out)
    (tasks[0].path / "data.txt").write_text("changed!")

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(CountStage, "compute", killed)
    with pytest.raises(KeyboardInterrupt):
        run_tasks(CountStage(), tasks, out)
    assert (stage_dir(out, "s1", "count") / "n.txt").read_text() == "2"
    assert os.listdir(stage_dir(out, "s1", "count").parent) == ["count"]  # no temp left over


def test_os_error_of_one_subject_is_its_reason(tmp_path: Path):
    """Issue 18, case 2 (per-subject stages): an OSError while reading a subject's files (here a
    symbolic-link loop) is that subject's `unreadable` reason with the path and the OS message,
    not `error:OSError`; the other subjects go on."""
    tasks = make_tasks(tmp_path / "in", ["good", "loop"])
    data = tmp_path / "in" / "loop" / "data.txt"
    data.unlink()
    os.symlink(data, data)
    results = {r.subject_id: r for r, _ in run_tasks(CountStage(), tasks, tmp_path / "out")}
    assert results["good"].status == OK
    loop = results["loop"]
    assert (loop.status, loop.reason) == (FAILED, "unreadable")
    assert loop.detail.startswith(f"{data} cannot be read: Too many levels of symbolic links")
    assert not loop.reusable
