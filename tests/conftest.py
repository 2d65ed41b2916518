"""Shared fixtures: the real FreeSurfer data in ../shared/data and a small generated cohort."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_SUBJECTS = (REPO.parent / "shared" / "data" / "freesurfer" / "subjects").resolve()
SHARED_LUT = SHARED_SUBJECTS.parent / "FreeSurferColorLUT.txt"
BIN = Path(sys.executable).parent


def _require_shared() -> Path:
    if not (SHARED_SUBJECTS / "bert").is_dir():
        pytest.skip(f"real FreeSurfer data not found at {SHARED_SUBJECTS} (CI has it)")
    return SHARED_SUBJECTS


@pytest.fixture(scope="session")
def shared_subjects() -> Path:
    """``SUBJECTS_DIR`` holding FreeSurfer's real ``bert`` and ``fsaverage``."""
    return _require_shared()


@pytest.fixture(scope="session")
def bert(shared_subjects: Path) -> Path:
    return shared_subjects / "bert"


@pytest.fixture(scope="session")
def fsaverage(shared_subjects: Path) -> Path:
    return shared_subjects / "fsaverage"


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory) -> Path:
    """Four synthetic subjects (seed 7), generated once per test session. Do not modify."""
    from damt.demo.cohort import generate_cohort

    out = tmp_path_factory.mktemp("demo") / "subjects"
    generate_cohort(out, 4, seed=7)
    return out


@pytest.fixture
def demo_copy(demo_cohort: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the demo cohort."""
    dst = tmp_path / "subjects"
    shutil.copytree(demo_cohort, dst)
    return dst


def run_stage_shards(stage, subjects_dir: Path, outdir: Path, **discovery_options) -> list[Path]:
    """Run a per-subject stage over a folder's subjects as the workflow's shard jobs do
    (discovery files, then one job per shard); returns the shard summaries."""
    from damt.discovery import discover_subjects, write_discovery
    from damt.paths import ResultPaths
    from damt.stages.store import run_shard

    discovery = discover_subjects([{"path": str(subjects_dir)}], **discovery_options)
    write_discovery(discovery, outdir)
    paths = ResultPaths(str(outdir))
    summaries = []
    for shard in discovery.shards():
        summary = Path(paths.stage_summary(stage.name, shard))
        run_shard(stage, paths.shard_members(shard), outdir, summary)
        summaries.append(summary)
    return summaries


def workflow_config(tmp_path: Path, subjects_dirs: list[dict], **sections) -> Path:
    """Write a config override file for running the real Snakefile on test data."""
    cfg = {
        "outdir": str(tmp_path / "results"),
        "subjects": {"dirs": subjects_dirs},
        "demo": {"enabled": False},
        # The default config probes the demo's phenotypes; tests pass their own or none.
        "probe": {"phenotypes": None},
    }
    for key, value in sections.items():
        cfg[key] = value
    path = tmp_path / "config.override.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_snakemake(
    *args: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run this environment's snakemake on the repository's Snakefile.

    It runs in the folder of the ``--configfile`` override (a test's tmp dir, see
    :func:`workflow_config`), never in the repository: tests do not share Snakemake's state
    (``.snakemake/``: metadata, locks, incomplete markers). ``config/`` there links to the
    repository's, so the default config and its files resolve.
    """
    if "--configfile" not in args:
        raise ValueError("run_snakemake needs a --configfile override (see workflow_config)")
    workdir = Path(args[args.index("--configfile") + 1]).parent
    link = workdir / "config"
    if not link.exists():
        link.symlink_to(REPO / "config")
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), *args]
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def jobs_of(stdout: str) -> dict[str, int]:
    """Rule → job count from a dry run's job stats."""
    if "Nothing to be done" in stdout:
        return {}
    table = stdout[stdout.index("Job stats:") :]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"
    }


def unprivileged(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``argv`` where file permissions apply: as `nobody` when we are root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip(
                "running as root without setpriv: cannot drop privileges to test permissions"
            )
        prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import damt"], env=env, cwd=cwd,
                           capture_output=True, text=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this Python/repository: {probe.stderr.strip()[-300:]}")
    return subprocess.run([*prefix, *argv], env=env, cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def open_tmp():
    """A temporary folder every user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="damt-perm-"))
    path.chmod(0o777)
    yield path
    for p in path.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(path)
