"""Shared fixtures: the real FreeSurfer data in ../shared/data and a small generated cohort."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

# Each pytest-xdist worker (``make test``) gets one core: numeric libraries in it and in every
# process it starts use one thread, because two workers' thread pools spinning on two cores
# slow each other down many times over.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
THREADS = 1 if XDIST_WORKER else 2

REPO = Path(__file__).resolve().parents[1]
SHARED_SUBJECTS = (REPO.parent / "shared" / "data" / "freesurfer" / "subjects").resolve()
SHARED_LUT = SHARED_SUBJECTS.parent / "FreeSurferColorLUT.txt"
BIN = Path(sys.executable).parent


# These modules run longest: they start first, so that no worker takes one last and runs alone
# (`make test` hands whole modules to its two workers in collection order).
LONGEST_FIRST = ("test_slurm.py", "test_workflow.py", "test_experiments_workflow.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_report_header(config: pytest.Config) -> str:
    # The suite's trainings write up to 1 GB per test (removed when it passes: pyproject.toml,
    # tmp_path_retention_policy): a full disk fails them with DiskFullError, not a slow test.
    where = config.option.basetemp or tempfile.gettempdir()
    free = shutil.disk_usage(Path(where) if Path(where).exists() else tempfile.gettempdir()).free
    return f"free disk space for test folders ({where}): {free / 2**30:.1f} GiB"


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
    """Four synthetic subjects (seed 7), generated once per test run. Do not modify."""
    from damt.demo.cohort import generate_cohort

    def build(path: Path) -> None:
        generate_cohort(path / "subjects", 4, seed=7)

    return build_once(tmp_path_factory, "demo", build) / "subjects"


@pytest.fixture
def demo_copy(demo_cohort: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the demo cohort."""
    dst = tmp_path / "subjects"
    shutil.copytree(demo_cohort, dst)
    return dst


def discover(dirs: list[dict], **options):
    """:func:`damt.discovery.scan.discover_subjects` with the schema's ``subjects`` settings
    (``options`` change them; the optional ones stay off unless given)."""
    from damt.config import validate_config
    from damt.discovery.scan import discover_subjects

    config = validate_config({"subjects": {"dirs": dirs}}, sections=("subjects", "sharding"))
    sub = config["subjects"]
    schema = {
        "required_files": sub["required_files"],
        "exclude": sub["exclude"],
        "include_templates": sub["include_templates"],
        "n_shards": config["sharding"]["n_shards"],
    }
    return discover_subjects(dirs, **{**schema, **options})


def run_stage_shards(stage, subjects_dir: Path, outdir: Path, **discovery_options) -> list[Path]:
    """Run a per-subject stage over a folder's subjects as the workflow's shard jobs do
    (discovery files, then one job per shard); returns the shard summaries."""
    from damt.discovery.record import write_discovery
    from damt.paths import ResultPaths
    from damt.stages.store import run_shard

    discovery = discover([{"path": str(subjects_dir)}], **discovery_options)
    write_discovery(discovery, outdir)
    paths = ResultPaths(str(outdir))
    summaries = []
    for shard in discovery.shards():
        summary = Path(paths.stage_summary(stage.name, shard))
        run_shard(stage, paths.shard_members(shard), outdir, summary)
        summaries.append(summary)
    return summaries


# The default config fine-tunes the demo (config/config.yaml); no task: no finetune job.
NO_FINETUNE = {"targets": [], "segmentation": {"enabled": False}}


def workflow_config(tmp_path: Path, subjects_dirs: list[dict], **sections) -> Path:
    """Write a config override file for running the real Snakefile on test data."""
    cfg = {
        "outdir": str(tmp_path / "results"),
        "subjects": {"dirs": subjects_dirs},
        "demo": {"enabled": False},
        # The default config probes and fine-tunes on the demo's phenotypes; tests pass their
        # own or none.
        "probe": {"phenotypes": None},
        "finetune": NO_FINETUNE,
    }
    for key, value in sections.items():
        cfg[key] = value
    path = tmp_path / "config.override.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def qc_settings(**qc):
    """The schema's ``qc`` settings with ``qc`` changed (a :class:`damt.qc.checks.QcSettings`)."""
    from damt.config import validate_config
    from damt.qc.checks import QcSettings

    return QcSettings.from_config(validate_config({"qc": qc}, sections=("qc",))["qc"])


def snakemake_command(*args: str) -> list[str]:
    """This environment's snakemake on the repository's Snakefile, with ``args``."""
    return [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), *args]


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
    proc = subprocess.run(
        snakemake_command(*args),
        cwd=workdir,
        capture_output=True,
        text=True,
        env=subprocess_env(**(env or {})),
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment for a child process, with ``extra`` on top: this checkout first on
    ``PYTHONPATH`` (ahead of an installed damt), the virtual environment's ``bin`` first on
    ``PATH`` (its snakemake, torchrun and python)."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


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
    env = subprocess_env()
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


# ---------------------------------------------------------------- the session's workflow runs

# Small and quick: one ROI at 2 mm (RADIOMICS_SPACING), a 2.5 mm cache padded to the tiny
# preset's 64³ crops, one epoch of the tiny model without the k-NN monitor, age only, all
# labels, the fewest bootstrap resamples.
RADIOMICS_SPACING = [2, 2, 2]
QUICK = {
    "radiomics": {"rois": {"whole_brain": ["nonzero"]}},
    "cache": {"spacing": 2.5, "min_size": 64},
    "pretrain": {
        "preset": "tiny",
        # One epoch: the workflow tests need a trained run, not training (tests/test_training_*).
        "epochs": 1,
        "warmup_epochs": 0,
        "batch_size_per_gpu": 2,
        "base_lr": 0.05,
        "num_workers": 0,
        "save_every": 1,
        "log_every_steps": 1,
        "eval_every": 0,
        "gpus": 0,
        "threads": THREADS,
    },
    # The fine-tuning tests set their own (tests/test_finetune.py).
    "finetune": NO_FINETUNE,
    "probe": {
        "targets": [{"name": "age", "type": "regression"}],
        "folds": 4,
        "inner_folds": 3,
        "label_fractions": [1.0],
        "bootstrap": 100,
    },
}
# The session cohort: eight generated subjects; the shared workflow runs see the first six, and
# tests add sub-007 as a new subject. Of the six, sub-001 and sub-004 are held out (a hash of the
# id; of the other two, sub-008).
COHORT_SIZE, UPSTREAM_SUBJECTS = 8, [f"sub-{i:03d}" for i in range(1, 7)]


@dataclass(frozen=True)
class Workdir:
    """A folder the real Snakefile runs in, every path in it relative to it.

    It holds ``config.override.yaml``, ``subjects/`` (links to subject folders, or copies),
    ``phenotypes.tsv``, ``radiomics.yaml``, ``results/`` and Snakemake's ``.snakemake/`` state.
    Relative paths, links that keep the subjects' ctimes (their fingerprints) and copies that
    keep mtimes make :meth:`copy` a workflow in the same state: nothing to be done after a
    finished run.
    """

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def subjects(self) -> Path:
        return self.root / "subjects"

    @property
    def config(self) -> Path:
        return self.root / "config.override.yaml"

    @property
    def args(self) -> tuple[str, str]:
        return ("--configfile", str(self.config))

    def override(self) -> dict:
        return yaml.safe_load(self.config.read_text())

    def set(self, **sections) -> Workdir:
        """Replace top-level sections of the override (``None`` removes one)."""
        cfg = self.override()
        for key, value in sections.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        self.config.write_text(yaml.safe_dump(cfg))
        return self

    def rel(self, path: str | Path) -> str:
        """``path`` as the workflow names it: relative to the workdir (``outdir: results``)."""
        return os.path.relpath(path, self.root) if Path(path).is_absolute() else str(path)

    def snakemake(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Snakemake in the workdir; absolute paths in it (targets) become workdir-relative."""
        inside = [self.rel(a) if a.startswith(f"{self.root}{os.sep}") else a for a in args]
        return run_snakemake(*inside, *self.args, check=check)

    def dry_run(self, *args: str) -> str:
        return self.snakemake("-n", *args).stdout

    def add_subject(self, source: Path) -> None:
        """Link another subject folder in (a new subject of the cohort)."""
        (self.subjects / source.name).symlink_to(source)

    def own_subject(self, subject_id: str) -> Path:
        """Replace a linked subject by a private copy (a changed subject); its folder."""
        link = self.subjects / subject_id
        source = link.resolve()
        link.unlink()
        shutil.copytree(source, link)
        return link

    def copy(self, dst: Path) -> Workdir:
        shutil.copytree(self.root, dst, symlinks=True)
        return Workdir(dst)


def write_radiomics_params(path: Path) -> Path:
    """The repository's PyRadiomics parameter file, resampled to :data:`RADIOMICS_SPACING`."""
    params = yaml.safe_load((REPO / "config" / "radiomics.yaml").read_text())
    params["setting"]["resampledPixelSpacing"] = RADIOMICS_SPACING
    path.write_text(yaml.safe_dump(params))
    return path


def new_workdir(root: Path, cohort: Path, subject_ids: list[str], **sections) -> Workdir:
    """A workdir over ``subject_ids`` of ``cohort`` (linked) with the :data:`QUICK` settings,
    its phenotypes and a private radiomics parameter file (resampled to
    :data:`RADIOMICS_SPACING`); ``sections`` replace QUICK's."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "subjects").mkdir()
    for sid in subject_ids:
        (root / "subjects" / sid).symlink_to(cohort / sid)
    shutil.copy(cohort / "phenotypes.tsv", root / "phenotypes.tsv")
    write_radiomics_params(root / "radiomics.yaml")
    (root / "config").symlink_to(REPO / "config")
    cfg = {
        "outdir": "results",
        "subjects": {"dirs": [{"path": "subjects"}]},
        "demo": {"enabled": False},
        **QUICK,
        "radiomics": {**QUICK["radiomics"], "params": "radiomics.yaml"},
        "probe": {**QUICK["probe"], "phenotypes": "phenotypes.tsv"},
        **sections,
    }
    (root / "config.override.yaml").write_text(yaml.safe_dump(cfg))
    return Workdir(root)


def build_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``tmp/<name>``, built by ``build(path)`` once per test run, shared by every pytest-xdist
    worker: the first worker to ask builds it under a file lock, the others wait and reuse it.
    A failed build is recorded, so the other workers fail at once instead of building again."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's basetemp is a folder of the run's one basetemp.
    root = base.parent if XDIST_WORKER else base
    path, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with FileLock(root / f"{name}.lock"):
        if failed.exists():
            pytest.fail(f"building {name} failed on another worker:\n{failed.read_text()}")
        if not done.exists():
            try:
                build(path)
            except BaseException as err:
                failed.write_text(f"{type(err).__name__}: {err}"[-8000:])
                raise
            done.touch()
    return path


# A single-node torchrun of this interpreter (add --nproc_per_node and the script).
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]


@pytest.fixture(scope="session")
def ddp_runs(tmp_path_factory) -> Path:
    """Every run of :data:`tests.training_data.DDP_RUNS`, trained on one 5-subject training set
    by one ``torchrun`` of two gloo ranks (tests/ddp_worker.py): run NAME's folder ``NAME/``
    holds its run (``run/``), each rank's state (``rank0``/``rank1.safetensors``) and last
    record (``record0``/``record1.pt``). Do not modify."""
    from tests.training_data import DDP_RUNS, write_config, write_training_set

    def build(path: Path) -> None:
        data = write_training_set(path / "data", n_subjects=5)
        runs = []
        for name, overrides in DDP_RUNS.items():
            (path / name).mkdir()
            runs += [write_config(path / name / "c.yaml", **overrides), path / name]
        worker = [str(REPO / "tests" / "ddp_worker.py"), str(data.root), *map(str, runs)]
        proc = subprocess.run(
            [*TORCHRUN, "--nproc_per_node=2", *worker], env=subprocess_env(OMP_NUM_THREADS="1"),
            capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"the DDP runs failed:\n{proc.stderr[-6000:]}")

    return build_once(tmp_path_factory, "ddp_runs", build)


def run_damt(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m damt ARGS`` of this checkout in ``cwd``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "damt", *map(str, args)],
        capture_output=True, text=True, env=subprocess_env(), cwd=cwd,
    )  # fmt: skip


def exported_run(run: Path, preset: str = "tiny"):
    """``run``: a run folder holding a randomly initialised encoder of ``preset``
    (:func:`damt.training.export.export_random_run`), and the encoder."""
    from damt.training.export import export_random_run

    return run, export_random_run(run, preset)


def file_checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def mount_read_only(path: Path) -> bool:
    """Put a read-only bind mount of ``path`` over itself (root only; undone when this process
    exits), so that not even root can write inside it; False where this process cannot mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    bind = ["mount", "--bind", str(path), str(path)]
    for i, command in enumerate((bind, ["mount", "-o", "remount,bind,ro", str(path)])):
        if subprocess.run(command, capture_output=True).returncode != 0:
            if i:
                subprocess.run(["umount", "--lazy", str(path)], capture_output=True)
            return False
    atexit.register(subprocess.run, ["umount", "--lazy", str(path)], capture_output=True)
    return True


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 1 MB file system (tmpfs) to fill up: mounting one takes root, so the test skips
    without it. Unmounted afterwards."""
    path = tmp_path / "small_fs"
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("a small file system to fill needs root (mount -t tmpfs)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


def fill(path: Path, leave_bytes: int) -> None:
    """Fill the file system of ``path`` until ``leave_bytes`` (about) are free."""
    free = shutil.disk_usage(path).free
    (path / "filler").write_bytes(b"\0" * max(free - leave_bytes, 0))


@pytest.fixture(scope="session")
def cohort8(tmp_path_factory) -> Path:
    """Eight synthetic subjects (seed 11), generated once per test run, then read-only (a
    read-only bind mount where the tests run as root: every workflow run of the session reads
    its inputs from a read-only SUBJECTS_DIR). ``checksums.json`` and ``read_only.json`` beside
    ``subjects/`` record what it held and how it was protected. Do not modify."""
    from damt.demo.cohort import generate_cohort

    def build(path: Path) -> None:
        generate_cohort(path / "subjects", COHORT_SIZE, seed=11)
        (path / "checksums.json").write_text(json.dumps(file_checksums(path / "subjects")))
        mounted = mount_read_only(path / "subjects")
        (path / "read_only.json").write_text(json.dumps({"mounted": mounted}))

    return build_once(tmp_path_factory, "cohort8", build) / "subjects"


@pytest.fixture(scope="session")
def upstream(cohort8: Path, tmp_path_factory) -> Workdir:
    """Every stage before pretraining (discovery, stats, radiomics, cache, QC, normalisation,
    manifest) on the six upstream subjects, built once per test run. Do not modify: tests take
    :func:`upstream_copy`."""

    def build(path: Path) -> None:
        new_workdir(path, cohort8, UPSTREAM_SUBJECTS).snakemake(
            "--cores", "2", "--omit-from", "pretrain"
        )

    return Workdir(build_once(tmp_path_factory, "upstream", build))


@pytest.fixture(scope="session")
def trained(upstream: Workdir, tmp_path_factory) -> Workdir:
    """:func:`upstream` with the whole workflow run: one tiny pretraining run (`default`), its
    training report and its probe. Do not modify: tests take :func:`trained_copy`."""

    def build(path: Path) -> None:
        upstream.copy(path).snakemake("--cores", "2")

    return Workdir(build_once(tmp_path_factory, "trained", build))


@pytest.fixture
def upstream_copy(upstream: Workdir, tmp_path: Path) -> Workdir:
    """A private copy of :func:`upstream` (results, Snakemake state, subject links)."""
    return upstream.copy(tmp_path / "workflow")


@pytest.fixture
def trained_copy(trained: Workdir, tmp_path: Path) -> Workdir:
    """A private copy of :func:`trained`."""
    return trained.copy(tmp_path / "workflow")
