"""Dry-run cost of the workflow's DAG at cohort scale.

Builds a SUBJECTS_DIR of N subject folders holding empty placeholder volumes (a dry run reads
none of them) and a phenotype table for them, then times ``snakemake -n`` of the whole workflow
(per-subject stages, QC, pretrain and the probe) on the real Snakefile (discovery included) in a
child process and reads its peak resident memory. Sharding follows the README's recommendation
(about 100 subjects per shard) unless --shards is given. With --paper-plan the config holds the
research plan's experiment section (PAPER_PLAN: full, 7 ablations, 5 data sizes, 3 presets, 3
seeds), so the dry run plans a pretrain, training_report and probe job per run and the summary.

    python bench/dag.py --subjects 60000 [--paper-plan]
    ... last line: subjects=N dry_run_s=X peak_mb=Y
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work" / "dag"
REQUIRED = ("mri/brainmask.mgz", "mri/aparc+aseg.mgz")
# The paper's plan at 60,000 subjects. Its largest data size is 45,000: 20 % of the cohort is held
# out for evaluation, so about 48,000 subjects can train. model-tiny is the full run (the config's
# preset is tiny): 16 runs asked for, 15 distinct, 45 with the seeds.
PAPER_PLAN = {
    "ablation": "leave_one_task_out",
    "data_scaling": [1000, 5000, 10000, 30000, 45000],
    "model_scaling": ["tiny", "full", "full_w8"],
    "seeds": [0, 1, 2],
}


def make_cohort(root: Path, n: int) -> Path:
    """N placeholder subjects and their phenotype table (reused across runs of the same size)."""
    marker = root / f".complete-{n}"
    phenotypes = root.parent / f"phenotypes-{n}.tsv"
    if marker.exists() and phenotypes.exists():
        return phenotypes
    shutil.rmtree(root, ignore_errors=True)
    rows = ["subject_id\tage\tsex"]
    for i in range(n):
        mri = root / f"sub-{i:06d}" / "mri"
        mri.mkdir(parents=True)
        for rel in REQUIRED:
            (root / f"sub-{i:06d}" / rel).touch()
        rows.append(f"sub-{i:06d}\t{40 + i % 40}\t{'FM'[i % 2]}")
    phenotypes.write_text("\n".join(rows) + "\n")
    marker.touch()
    return phenotypes


def dry_run(config: Path, workdir: Path, extra: list[str]) -> tuple[float, float, str]:
    """(seconds, peak MiB, tail of output) of one ``snakemake -n`` in a child process."""
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "-n",
        "--quiet",
        "rules",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(config),
        *extra,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if peak_kb <= before:
        print("warning: peak memory of this child not above an earlier child's", file=sys.stderr)
    return seconds, peak_kb / 1024, (proc.stdout + proc.stderr).strip()[-1500:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, required=True)
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        help="sharding.n_shards (default: subjects // 100, at least 1)",
    )
    parser.add_argument(
        "--paper-plan", action="store_true", help="plan the experiments of PAPER_PLAN too"
    )
    args = parser.parse_args()
    n_shards = args.shards if args.shards is not None else max(1, args.subjects // 100)
    cohort = WORK / f"subjects-{args.subjects}"
    t0 = time.perf_counter()
    phenotypes = make_cohort(cohort, args.subjects)
    print(
        f"cohort of {args.subjects} placeholder subjects ready ({time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
    )
    run = WORK / f"run-{args.subjects}-{n_shards}{'-paper' if args.paper_plan else ''}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    config = run / "bench.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "outdir": str(run / "results"),
                "subjects": {"dirs": [{"path": str(cohort)}], "exclude": []},
                "sharding": {"n_shards": n_shards},
                "demo": {"enabled": False},
                "probe": {"phenotypes": str(phenotypes)},
                **({"experiments": PAPER_PLAN} if args.paper_plan else {}),
            }
        )
    )
    # The repository's config files (params, label table) are read relative to the workdir.
    for rel in ("config",):
        os.symlink(REPO / rel, run / rel)
    first, first_mb, _ = dry_run(config, run, [])
    second, second_mb, tail = dry_run(config, run, [])
    print(tail.splitlines()[-1] if tail else "", file=sys.stderr)
    print(
        f"first dry run (writes the discovery files): {first:.1f} s, {first_mb:.0f} MiB",
        file=sys.stderr,
    )
    print(f"sharding.n_shards={n_shards}", file=sys.stderr)
    jobs = re.search(r"^pretrain\s+(\d+)$", tail, re.M)
    print(
        f"subjects={args.subjects} pretrain_jobs={jobs.group(1) if jobs else '?'} "
        f"dry_run_s={second:.1f} peak_mb={max(first_mb, second_mb):.0f}"
    )


if __name__ == "__main__":
    main()
