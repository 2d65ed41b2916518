"""The one error type for a problem with one subject's data."""

from __future__ import annotations


class SubjectError(Exception):
    """A problem with one subject's data. ``reason`` is a machine-readable code (e.g.
    ``stats_missing``), ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
