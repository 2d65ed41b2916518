"""Small file helpers shared by every stage: atomic writes, write-if-changed, hashing."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; published files get the mode a plain open() would give them.
_FILE_MODE = 0o666 & ~_current_umask()


def fsync(path: str | Path) -> None:
    """Flush ``path`` (a file or a folder) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, durable: bool = False):
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    Readers never see a half-written file, and a crash leaves the previous version intact.
    ``durable``: the file is on the disk before the rename and the rename after it (fsync), so
    that not even a power cut leaves a truncated file under ``path`` (checkpoints, the exported
    encoder and its model card: what a long run cannot afford to lose).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        if durable:
            fsync(tmp)
        os.replace(tmp, path)
        if durable:
            fsync(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (``durable``: see :func:`atomic_path`)."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


def write_text_if_changed(path: str | Path, text: str) -> bool:
    """Write ``text`` unless ``path`` already holds exactly it; return whether it was written.

    Keeping the old file (and its mtime) when nothing changed is what lets Snakemake's mtime
    trigger tell "the cohort changed" from "the workflow was parsed again".
    """
    path = Path(path)
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_bytes_atomic(path, data)
    return True


def write_json_atomic(path: str | Path, obj: Any, durable: bool = False) -> None:
    """Write ``obj`` as indented JSON, atomically (``durable``: see :func:`atomic_path`)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


# Resolution of every figure the workflow writes (the report's PNGs).
FIGURE_DPI = 90


def save_figure(fig, path: str | Path, **savefig) -> None:
    """Write a matplotlib figure as a PNG at :data:`FIGURE_DPI`, atomically."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=FIGURE_DPI, **savefig))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# Hex characters kept of a SHA-256 in fingerprints, signatures and ids: 64 bits, so collisions
# stay negligible at any cohort size. Changing it changes every stored signature (retrains).
HASH_CHARS = 16


def stable_hash(obj: Any) -> str:
    """Short hex digest of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:HASH_CHARS]
