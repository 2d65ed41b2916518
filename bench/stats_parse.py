"""Stats parsing throughput: damt's parser against the `freesurfer-stats` package, in one run.

    python bench/stats_parse.py [--subject DIR] [--rounds N]

`freesurfer-stats` pins pandas<2 and numpy<2, so it lives in its own virtual environment
(bench/.work/fss-venv, created on first use from PyPI) and this script runs itself there in
`--worker` mode. Both parsers read the files both can read (the ?h.aparc*.stats and
?h.BA_exvivo*.stats files that mris_anatomical_stats writes: `freesurfer-stats` reads no others)
of one subject, every round re-reading the files from disk; the time of a subject is the best
round (the least disturbed by other processes on the machine). Every value `freesurfer-stats`
returns is compared with damt's. The last line reads
`ratio_vs_freesurfer_stats=X values_identical=true|false`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".work" / "fss-venv"
# The newest releases that install on Python 3.11 and satisfy freesurfer-stats' pins.
FSS_REQUIREMENTS = ("freesurfer-stats==1.2.1", "pandas==1.5.3", "numpy==1.26.4")
DEFAULT_SUBJECT = REPO.parent / "shared" / "data" / "freesurfer" / "subjects" / "bert"
COMMON_PATTERNS = ("?h.aparc*.stats", "?h.BA_exvivo*.stats")


def common_files(subject: Path) -> list[Path]:
    """The stats files both parsers read."""
    files = sorted({p for pat in COMMON_PATTERNS for p in (subject / "stats").glob(pat)})
    if not files:
        raise SystemExit(f"no ?h.aparc*.stats / ?h.BA_exvivo*.stats in {subject / 'stats'}")
    return files


def best_round(fn, rounds: int) -> tuple[float, list[float]]:
    """Seconds of the fastest of ``rounds`` calls (after one warm-up call), and all of them."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


# --- worker: runs inside the freesurfer-stats environment -------------------------------------


def worker(files: list[str], rounds: int) -> None:
    """Time freesurfer-stats and print its values and timings as JSON."""
    import numpy
    import pandas
    from freesurfer_stats import CorticalParcellationStats, __version__

    def parse_all():
        return [CorticalParcellationStats.read(f) for f in files]

    best, times = best_round(parse_all, rounds)
    values = {}
    for path, stats in zip(files, parse_all(), strict=True):
        table = stats.structural_measurements
        values[path] = {
            "whole_brain": [float(v) for v in stats.whole_brain_measurements.iloc[0]],
            "structures": list(table["structure_name"]),
            "table": table.drop(columns="structure_name").astype(float).values.tolist(),
        }
    versions = {"freesurfer-stats": __version__, "pandas": pandas.__version__}
    versions["numpy"] = numpy.__version__
    print(json.dumps({"best": best, "times": times, "values": values, "versions": versions}))


def ensure_venv() -> Path:
    """The freesurfer-stats virtual environment's Python (created and filled on first use)."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    if stamp.is_file() and stamp.read_text() == " ".join(FSS_REQUIREMENTS):
        return python
    print(f"creating {VENV} with {' '.join(FSS_REQUIREMENTS)} ...", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q"]
    subprocess.run([*pip, *FSS_REQUIREMENTS], check=True)
    stamp.write_text(" ".join(FSS_REQUIREMENTS))
    return python


# --- main ---------------------------------------------------------------------------------


def compare(ours: dict, theirs: dict) -> list[str]:
    """Differences between the two parsers' values (empty when identical)."""

    def eq(a: float, b: float) -> bool:
        return a == b or (math.isnan(a) and math.isnan(b))

    problems = []
    for path, t in theirs.items():
        f = ours[path]
        # freesurfer-stats drops the first '# Measure' line of each file (it consumes it while
        # looking for the end of the header), so its whole-brain values are ours from the 2nd.
        mine = [m.value for m in f.measures][1:]
        if len(mine) != len(t["whole_brain"]) or not all(map(eq, mine, t["whole_brain"])):
            problems.append(f"{path}: '# Measure' values differ")
        if t["structures"] != f.table.structures_original:
            problems.append(f"{path}: structure names differ")
        if len(t["table"]) != len(f.table.values) or not all(
            len(a) == len(b) and all(map(eq, a, b))
            for a, b in zip(f.table.values, t["table"], strict=False)
        ):
            problems.append(f"{path}: table values differ")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", type=Path, default=DEFAULT_SUBJECT, help="subject folder")
    parser.add_argument("--rounds", type=int, default=200, help="rounds of damt's parser")
    parser.add_argument("--fss-rounds", type=int, default=30, help="rounds of freesurfer-stats")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.fss_rounds)
        return 0

    sys.path.insert(0, str(REPO))
    from damt.freesurfer.stats.long_table import long_table
    from damt.freesurfer.stats.parser import parse_stats_file
    from damt.freesurfer.stats.subject import parse_subject_stats

    files = common_files(args.subject)
    python = ensure_venv()
    proc = subprocess.run(
        [str(python), __file__, "--fss-rounds", str(args.fss_rounds), "--worker"]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(proc.stdout)

    def parse_common():
        return {str(f): parse_stats_file(f) for f in files}

    best, _ = best_round(parse_common, args.rounds)
    ours = parse_common()
    problems = compare(ours, theirs["values"])
    subject_best, _ = best_round(lambda: parse_subject_stats(args.subject), args.rounds)
    n_all = len(parse_subject_stats(args.subject).files)
    long_best, _ = best_round(lambda: long_table(parse_subject_stats(args.subject)), args.rounds)

    n_values = sum(len(v["whole_brain"]) + len(v["table"]) * len(v["table"][0])
                   for v in theirs["values"].values())  # fmt: skip
    v = theirs["versions"]
    ratio = theirs["best"] / best
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print("load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"python {platform.python_version()}; subject {args.subject}")
    print(f"files both read: {len(files)} ({', '.join(f.name for f in files)})")
    print(f"values compared: {n_values}")
    print(
        f"freesurfer-stats {v['freesurfer-stats']} (pandas {v['pandas']}, numpy {v['numpy']}): "
        f"{theirs['best'] * 1e3:.2f} ms/subject = {1 / theirs['best']:.1f} subjects/s "
        f"(best of {args.fss_rounds})"
    )
    print(f"damt: {best * 1e3:.2f} ms/subject = {1 / best:.0f} subjects/s (best of {args.rounds})")
    print(
        f"damt, all {n_all} modelled stats files of the subject: {subject_best * 1e3:.2f} ms "
        f"= {1 / subject_best:.0f} subjects/s; with the long table (pandas): "
        f"{long_best * 1e3:.2f} ms"
    )
    for problem in problems:
        print(f"DIFFERENCE: {problem}")
    print(
        f"ratio_vs_freesurfer_stats={ratio:.1f} values_identical={'false' if problems else 'true'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
