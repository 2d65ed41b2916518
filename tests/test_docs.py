"""The README is the entry point: short, and every reference page in docs/ reachable from it;
no relative link in the README or the docs points at nothing."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from .conftest import run_damt

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
# [text](target) with a relative target (no scheme), without its #anchor.
LINK = re.compile(r"\]\((?![a-z]+:)([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_short_and_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    linked = {(README.parent / target).resolve() for target in LINK.findall(text)}
    assert PAGES and not [p.name for p in PAGES if p.resolve() not in linked]


def test_relative_links_resolve():
    broken = [
        f"{doc.relative_to(REPO)}: {target}"
        for doc in [README, *PAGES]
        for target in LINK.findall(doc.read_text())
        if not (doc.parent / target).exists()
    ]
    assert not broken, broken


def test_the_troubleshooting_page_covers_each_fault():
    """Issue 30, case 8: one page says, for each fault the workflow handles, what it does and
    what the user runs next; the README points to it."""
    page = REPO / "docs" / "troubleshooting.md"
    text = page.read_text()
    faults = (
        "preempted", "checkpoint cut short", "full disk", "`metrics.jsonl`", "spreadsheet",
        "read-only", "`discovery:recon_stale`", "FastSurfer 1.x", "`pretrain.collective_timeout_s`",
        "non-finite", "Snakemake killed", "another process still trains",
    )  # fmt: skip
    assert [f for f in faults if f not in text] == []
    assert "](docs/troubleshooting.md)" in README.read_text()


@pytest.mark.slow
def test_the_using_weights_page_runs(trained_copy):
    """Issue 26, item 5: every code block of docs/using-weights.md, in order, in a workflow
    folder after the session's run (its demo subjects where `make demo` puts them): Python
    blocks share one namespace, shell blocks hold `damt` commands only."""
    page = (REPO / "docs" / "using-weights.md").read_text()
    blocks = re.findall(r"```(python|bash)\n(.*?)```", page, flags=re.S)
    kinds = [kind for kind, _ in blocks]
    assert kinds.count("python") >= 3 and "bash" in kinds
    root = trained_copy.root
    (root / "results" / "demo").mkdir(parents=True, exist_ok=True)
    (root / "results" / "demo" / "subjects").symlink_to(root / "subjects")
    namespace: dict = {}
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for kind, code in blocks:
            if kind == "python":
                exec(compile(code, "docs/using-weights.md", "exec"), namespace)
                continue
            for line in filter(None, code.splitlines()):
                assert line.startswith("damt "), f"not a damt command: {line}"
                done = run_damt(*shlex.split(line)[1:])
                assert done.returncode == 0, done.stderr
    finally:
        os.chdir(cwd)
    assert namespace["loss"].item() > 0 and len(namespace["features"]) >= 4
