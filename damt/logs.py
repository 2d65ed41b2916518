"""Logging set-up shared by the command line and the workflow's rule scripts."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
def rule_log(log_file: str) -> Iterator[None]:
    """Log a rule job to its log file; a failure is written there too, then re-raised."""
    setup_logging(log_file=log_file, stderr=False)
    try:
        yield
    except Exception as exc:
        logging.getLogger("damt").error(
            "job failed: %s: %s", type(exc).__name__, exc, exc_info=True
        )
        raise
