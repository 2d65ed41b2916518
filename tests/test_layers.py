"""The package's layers (pyproject.toml, ``[tool.importlinter]``): imports point down.

``lint-imports`` checks the contract on this checkout, and fails on a copy of the package into
which one upward import was written (the bottom layer's ``damt.io`` importing the trainer; inside
the probe, one fit importing the per-target code).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the repository's contract on the ``damt`` in ``package_parent``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=package_parent, capture_output=True, text=True,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(package_parent)},
    )  # fmt: skip


def test_the_package_keeps_its_layers():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path):
    shutil.copytree(REPO / "damt", tmp_path / "damt", ignore=shutil.ignore_patterns("__pycache__"))
    io = tmp_path / "damt" / "io.py"
    io.write_text(io.read_text() + "\nimport damt.training.loop  # noqa: E402,F401\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and "damt.io -> damt.training.loop" in done.stdout, done.stdout


def test_an_upward_import_inside_the_probe_breaks_its_contract(tmp_path: Path):
    shutil.copytree(REPO / "damt", tmp_path / "damt", ignore=shutil.ignore_patterns("__pycache__"))
    estimators = tmp_path / "damt" / "probe" / "estimators.py"
    estimators.write_text(
        estimators.read_text() + "\nimport damt.probe.targets  # noqa: E402,F401\n"
    )
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "5 kept, 1 broken" in done.stdout, done.stdout
    assert "damt.probe.estimators -> damt.probe.targets" in done.stdout, done.stdout
