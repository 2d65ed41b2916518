"""Logging set-up shared by the command line and the workflow's rule scripts."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from damt.errors import reported_disk_full

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False, log_file: str | None = None, stderr: bool = True) -> None:
    """Log to stderr and/or ``log_file`` (appended) with timestamps."""
    handlers: list[logging.Handler] = []
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=FORMAT,
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)


@contextmanager
def rule_log(log_file: str, outputs: Iterable[str] = ()) -> Iterator[None]:
    """Log a rule job to its log file; a failure is written there too, then re-raised (a full
    disk as a :class:`damt.errors.DiskFullError` naming the folder of ``outputs``)."""
    setup_logging(log_file=log_file, stderr=False)
    try:
        yield
    except Exception as exc:
        # A full disk or quota in any stage names the path and the space left (the error's
        # own message names neither the space nor, for numpy's short writes, the cause).
        parents = [os.path.dirname(os.path.abspath(f)) for f in outputs or [log_file]]
        reported = reported_disk_full(exc, os.path.commonpath(parents))
        logging.getLogger("damt").error(
            "job failed: %s: %s", type(reported).__name__, reported, exc_info=True
        )
        if reported is exc:
            raise
        raise reported from exc
