"""The error types shared by the stages: a problem with one subject's data, and a full disk."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


class DiskFullError(OSError):
    """No space (or no quota) left where a stage writes: the whole job stops, since every other
    subject would fail the same way; the message names the path and the space left."""


def disk_full(exc: OSError, where: str | Path) -> DiskFullError | None:
    """A :class:`DiskFullError` for an ``ENOSPC``/``EDQUOT`` error while writing under
    ``where``, or for a short write (numpy reports one as ``N requested and M written``, without
    an errno: on a regular file only a full disk or quota cuts a write short); None otherwise."""
    short = exc.errno is None and _SHORT_WRITE.search(str(exc)) is not None
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT) and not short:
        return None
    try:
        free = f"{shutil.disk_usage(where).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    reason = "no quota left" if exc.errno == errno.EDQUOT else "no space left"
    return DiskFullError(
        exc.errno,
        f"{reason} writing {exc.filename or where} ({free} on the file system of {where}); "
        "free space or raise the quota, then rerun: nothing of this job was kept",
    )


class SubjectError(Exception):
    """A problem with one subject's data. ``reason`` is a machine-readable code (e.g.
    ``stats_missing``), ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
