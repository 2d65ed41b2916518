"""What one Snakemake `stats` job costs next to the parse it runs, per subject and sharded.

    python bench/stats_jobs.py [--subjects N] [--shards K]

Builds N subjects under bench/.work/jobs/ (copies of bert's stats/, bert's volumes linked), then
times: the interpreter start and imports of a rule script; the stats stage in-process (parse +
long table written as Parquet); and real `snakemake --cores 2` runs of the stats and table rules
with one job per subject (`sharding.n_shards: 0`) and with K shards. Prints the figures that
bench/RESULTS.md records.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work" / "jobs"
BERT = REPO.parent / "shared" / "data" / "freesurfer" / "subjects" / "bert"
BIN = Path(sys.executable).parent


def make_subjects(n: int) -> Path:
    """``n`` subject folders with bert's stats (copied) and volumes (linked)."""
    root = WORK / "subjects"
    shutil.rmtree(root, ignore_errors=True)
    for i in range(n):
        folder = root / f"sub-{i:04d}"
        shutil.copytree(BERT / "stats", folder / "stats")
        (folder / "mri").mkdir()
        for name in ("brainmask.mgz", "aparc+aseg.mgz"):
            (folder / "mri" / name).symlink_to(BERT / "mri" / name)
    return root


def seconds(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
    return time.perf_counter() - t0


def import_cost(env: dict) -> tuple[float, float]:
    """Best of 5: bare interpreter start, and start + the imports of the stats rule script."""
    bare = min(seconds([sys.executable, "-c", "pass"], env) for _ in range(5))
    code = "import damt.cli, damt.stages.stats"
    full = min(seconds([sys.executable, "-c", code], env) for _ in range(5))
    return bare, full


def in_process(root: Path) -> float:
    """Seconds per subject of the stats stage run in this process (parse + Parquet)."""
    sys.path.insert(0, str(REPO))
    from damt.stages.stats import StatsStage
    from damt.stages.store import SubjectTask, run_tasks

    tasks = [SubjectTask(p.name, p) for p in sorted(root.iterdir())]
    out = WORK / "inprocess"
    shutil.rmtree(out, ignore_errors=True)
    run_tasks(StatsStage(), tasks[:2], out, force=True)  # warm-up: imports, first Parquet write
    t0 = time.perf_counter()
    run_tasks(StatsStage(), tasks, out, force=True)
    return (time.perf_counter() - t0) / len(tasks)


def tables_in_process(n_shards: int) -> float:
    """Seconds per subject of the morphometry tables, in-process, on a finished run."""
    from damt.features.morphometry import build_morphometry_tables
    from damt.paths import ResultPaths

    outdir = WORK / f"results-{n_shards}"
    summaries = sorted((outdir / "stats" / "shards").glob("*.tsv"))
    subjects = ResultPaths(str(outdir)).discovery_subjects()
    outputs = {g: WORK / f"tables-{g}.parquet" for g in ("global", "local")}
    catalog = REPO / "config" / "morphometry_catalog.yaml"
    t0 = time.perf_counter()
    frames = build_morphometry_tables(summaries, subjects, catalog, outputs)
    return (time.perf_counter() - t0) / len(frames["global"])


def workflow_run(root: Path, n_shards: int, env: dict) -> dict:
    """A real Snakemake run of the stats and table rules; wall time and the jobs' own times."""
    outdir = WORK / f"results-{n_shards}"
    shutil.rmtree(outdir, ignore_errors=True)
    config = WORK / f"config-{n_shards}.yaml"
    config.write_text(
        json.dumps(
            {
                "outdir": str(outdir),
                "subjects": {"dirs": [{"path": str(root)}]},
                "sharding": {"n_shards": n_shards},
                "demo": {"enabled": False},
            }
        )
    )
    cmd = [str(BIN / "snakemake"), "--cores", "2", "--configfile", str(config), "--quiet", "all"]
    wall = seconds(cmd, env)
    jobs = []
    for path in sorted((outdir / "benchmarks" / "stats").glob("*.tsv")):
        with open(path) as fh:
            jobs.append(float(next(csv.DictReader(fh, delimiter="\t"))["s"]))
    with open(outdir / "benchmarks" / "morphometry_tables.tsv") as fh:
        tables = float(next(csv.DictReader(fh, delimiter="\t"))["s"])
    return {"wall": wall, "jobs": jobs, "tables": tables}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=48)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    root = make_subjects(args.subjects)
    bare, imports = import_cost(env)
    per_subject = in_process(root)
    unsharded = workflow_run(root, 0, env)
    sharded = workflow_run(root, args.shards, env)
    tables = tables_in_process(0)

    n = args.subjects
    job_mean = sum(unsharded["jobs"]) / len(unsharded["jobs"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print("load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"subjects: {n} (copies of bert's 19 stats files)")
    print(f"python start: {bare * 1e3:.0f} ms; start + rule-script imports: {imports * 1e3:.0f} ms")
    print(f"stats stage in-process: {per_subject * 1e3:.1f} ms/subject (parse + Parquet)")
    print(
        f"n_shards=0: {len(unsharded['jobs'])} stats jobs, {job_mean:.2f} s each "
        f"(Snakemake benchmark), {sum(unsharded['jobs']):.1f} s of jobs; "
        f"run wall {unsharded['wall']:.1f} s; tables job {unsharded['tables']:.2f} s"
    )
    print(
        f"n_shards={args.shards}: {len(sharded['jobs'])} stats jobs, "
        f"{', '.join(f'{s:.2f}' for s in sharded['jobs'])} s; "
        f"run wall {sharded['wall']:.1f} s; tables job {sharded['tables']:.2f} s"
    )
    print(f"morphometry tables in-process: {tables * 1e3:.1f} ms/subject")
    print(
        f"job overhead / parse: {(job_mean - per_subject) / per_subject:.0f}x "
        f"({job_mean * 1e3:.0f} ms per one-subject job vs {per_subject * 1e3:.1f} ms of work)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
