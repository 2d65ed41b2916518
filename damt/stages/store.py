"""Per-subject work inside shard jobs, with a per-subject result store.

A per-subject stage (stats, radiomics, cache) runs one Snakemake job per shard. The job calls
:func:`run_shard`, which for every subject of the shard reuses the subject's stored result when
its result key (stage version, stage settings, size and mtime of the stage's input files) is
unchanged, and computes it otherwise. Results live in ``{outdir}/subjects/{id}/{stage}/``:
the stage's files plus ``result.json``. A subject whose data are bad gets a failed result with a
machine-readable reason and the shard goes on; results of other subjects are never touched, so a
rerun after new subjects arrive leaves old results byte- and mtime-identical.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from damt import __version__
from damt.discovery.record import read_shard
from damt.errors import SubjectError, disk_full
from damt.io import stable_hash, write_json_atomic
from damt.paths import ResultPaths
from damt.results import FAILED, OK, RESULT_FILE, SUMMARY_COLUMNS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubjectTask:
    """One subject to process."""

    subject_id: str
    path: Path


@dataclass
class SubjectResult:
    """What a stage reports for one subject (stored as ``result.json``)."""

    subject_id: str
    status: str  # ok | failed
    reason: str = ""  # machine-readable code, empty when ok
    detail: str = ""
    outputs: dict[str, str] = field(default_factory=dict)  # name → file inside the stage dir
    info: dict = field(default_factory=dict)  # stage-specific facts (e.g. FreeSurfer version)
    key: str = ""
    reusable: bool = True  # False for unexpected errors: retried on the next run
    seconds: float = 0.0
    damt_version: str = __version__


class Stage(ABC):
    """A per-subject computation. Subclasses must be picklable (they may run in workers)."""

    name: str = ""
    version: str = "1"  # bump when the computation changes: invalidates every stored result
    # Threads one compute() may use. Worker processes get 1: the pool is the parallelism, and
    # a job of n threads must not run n workers of n threads each.
    threads: int = 1

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Build expensive state once per process (e.g. a feature extractor)."""

    def params(self) -> dict:
        """Settings that change the result (part of the result key)."""
        return {}

    @abstractmethod
    def input_files(self, task: SubjectTask) -> list[Path]:
        """Files the result depends on (their size and mtime are part of the result key)."""

    @abstractmethod
    def compute(self, task: SubjectTask, workdir: Path) -> SubjectResult:
        """Write the subject's outputs into ``workdir`` and describe them.

        Raise :class:`SubjectError` for bad data; any other exception is recorded as an
        unexpected (never reused) failure.
        """


def stage_dir(outdir: str | Path, subject_id: str, stage: str) -> Path:
    """Folder of one subject's stored result of one stage."""
    return Path(ResultPaths(str(outdir)).subject_stage(subject_id, stage))


def read_result(outdir: str | Path, subject_id: str, stage: str) -> SubjectResult | None:
    """The stored result of a subject, or None when there is none."""
    path = stage_dir(outdir, subject_id, stage) / RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    # Stores written before the result store got its name call the flag "cacheable".
    if "cacheable" in data:
        data.setdefault("reusable", data.pop("cacheable"))
    known = SubjectResult.__dataclass_fields__
    return SubjectResult(**{k: v for k, v in data.items() if k in known})


def result_key(stage: Stage, task: SubjectTask) -> str:
    """Key of a subject's result: stage version and settings, input sizes and mtimes."""
    files = []
    for path in stage.input_files(task):
        try:
            st = os.stat(path)
            files.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((str(path), None, None))
    return stable_hash(
        {"stage": stage.name, "version": stage.version, "params": stage.params(), "files": files}
    )


def _changed_since_failure(stage: Stage, task: SubjectTask, outdir: Path) -> bool:
    """True when an input of a failed result changed after the failure was stored.

    The result key holds sizes and mtimes; a fix that keeps both (``cp -p`` of a good file)
    still changes the file's ctime, so a failed subject is retried once its inputs were touched.
    """
    try:
        stored = (stage_dir(outdir, task.subject_id, stage.name) / RESULT_FILE).stat().st_mtime_ns
    except OSError:
        return True
    for path in stage.input_files(task):
        try:
            if os.stat(path).st_ctime_ns > stored:
                return True
        except OSError:
            continue
    return False


def _publish(workdir: Path, target: Path) -> None:
    """Move a finished result folder into place, replacing the previous one."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(workdir, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run_one(stage: Stage, task: SubjectTask, outdir: Path, key: str) -> SubjectResult:
    target = stage_dir(outdir, task.subject_id, stage.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{stage.name}.tmp-", dir=target.parent))
    start = time.perf_counter()
    try:
        result = stage.compute(task, workdir)
    except SubjectError as exc:
        result = SubjectResult(task.subject_id, FAILED, exc.reason, exc.detail)
    except OSError as exc:  # the subject's files cannot be read: its reason, not a crash
        full = disk_full(exc, target.parent)
        if full is not None:  # not the subject's fault: stop the job, keep no partial result
            shutil.rmtree(workdir, ignore_errors=True)
            raise full from exc
        where = exc.filename or task.path
        result = SubjectResult(
            task.subject_id,
            FAILED,
            "unreadable",
            f"{where} cannot be read: {exc.strerror or exc}; fix its permissions or the file, "
            "then rerun",
            reusable=False,
        )
    except Exception as exc:  # one subject's crash must not stop the shard
        log.error(
            "%s: unexpected error in %s:\n%s", task.subject_id, stage.name, traceback.format_exc()
        )
        result = SubjectResult(
            task.subject_id,
            FAILED,
            f"error:{type(exc).__name__}",
            str(exc) or type(exc).__name__,
            reusable=False,
        )
    except BaseException:  # interrupted (Ctrl-C, job killed): keep the previous result
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    result.subject_id = task.subject_id
    result.key = key
    result.seconds = round(time.perf_counter() - start, 3)
    if result.status == FAILED:
        # A failed subject keeps no partial outputs.
        for child in workdir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        result.outputs = {}
    write_json_atomic(workdir / RESULT_FILE, asdict(result))
    _publish(workdir, target)
    return result


_WORKER_STAGE: Stage | None = None


def _worker_init(stage: Stage) -> None:
    global _WORKER_STAGE
    stage.threads = 1
    stage.setup()
    _WORKER_STAGE = stage


def _worker_run(args: tuple[SubjectTask, Path, str]) -> SubjectResult:
    assert _WORKER_STAGE is not None
    return _run_one(_WORKER_STAGE, *args)


def run_tasks(
    stage: Stage,
    tasks: Sequence[SubjectTask],
    outdir: str | Path,
    workers: int = 1,
    force: bool = False,
) -> list[tuple[SubjectResult, bool]]:
    """Bring every task's result up to date; return ``(result, was_reused)`` in task order."""
    outdir = Path(outdir)
    results: dict[str, tuple[SubjectResult, bool]] = {}
    todo: list[tuple[SubjectTask, Path, str]] = []
    for task in tasks:
        key = result_key(stage, task)
        previous = None if force else read_result(outdir, task.subject_id, stage.name)
        if (
            previous is not None
            and previous.key == key
            and previous.reusable
            and not (previous.status == FAILED and _changed_since_failure(stage, task, outdir))
        ):
            results[task.subject_id] = (previous, True)
        else:
            todo.append((task, outdir, key))
    log.info(
        "%s: %d subject(s), %d reused, %d to compute",
        stage.name,
        len(tasks),
        len(tasks) - len(todo),
        len(todo),
    )

    def report(i: int, res: SubjectResult) -> None:
        msg = "ok" if res.status == OK else f"FAILED {res.reason}: {res.detail}"
        log.info("[%d/%d] %s %s (%.1f s)", i, len(todo), res.subject_id, msg, res.seconds)
        results[res.subject_id] = (res, False)

    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)), initializer=_worker_init, initargs=(stage,)
        ) as pool:
            for i, res in enumerate(pool.map(_worker_run, todo), 1):
                report(i, res)
    elif todo:
        stage.setup()
        for i, args in enumerate(todo, 1):
            report(i, _run_one(stage, *args))
    return [results[t.subject_id] for t in tasks]


def run_shard(
    stage: Stage,
    members_file: str | Path,
    outdir: str | Path,
    summary: str | Path,
    workers: int = 1,
    force: bool = False,
) -> pd.DataFrame:
    """Process one shard (a discovery membership file) and write its summary table (TSV)."""
    tasks = [SubjectTask(row["subject_id"], Path(row["path"])) for row in read_shard(members_file)]
    done = run_tasks(stage, tasks, outdir, workers=workers, force=force)
    rows = []
    for r, reused in done:
        where = stage_dir(outdir, r.subject_id, stage.name)
        outputs = {k: str(where / v) for k, v in r.outputs.items()}
        rows.append(
            [
                r.subject_id,
                r.status,
                r.reason,
                r.detail,
                reused,
                json.dumps(outputs, sort_keys=True),
                json.dumps(r.info, sort_keys=True, default=str),
            ]
        )
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    summary = Path(summary)
    summary.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(summary, sep="\t", index=False)
    return frame
