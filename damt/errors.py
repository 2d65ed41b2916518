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


def disk_full(
    exc: OSError, where: str | Path, kept: str = "nothing of this job was kept"
) -> DiskFullError | None:
    """A :class:`DiskFullError` for an ``ENOSPC``/``EDQUOT`` error while writing under
    ``where``, or for a short write (numpy reports one as ``N requested and M written``, without
    an errno: on a regular file only a full disk or quota cuts a write short); None otherwise.
    ``kept`` says what survived, for the message."""
    short = exc.errno is None and _SHORT_WRITE.search(str(exc)) is not None
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT) and not short:
        return None
    try:
        free = f"{shutil.disk_usage(where).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    reason = "no quota left" if exc.errno == errno.EDQUOT else "no space left"
    writing = f"writing {exc.filename}" if exc.filename else f"writing under {where}"
    return DiskFullError(
        exc.errno,
        f"{reason} {writing} ({free} on the file system of {where}); "
        f"free space or raise the quota, then rerun: {kept}",
    )


def reported_disk_full(exc: BaseException, where: str | Path) -> BaseException:
    """``exc`` as a :class:`DiskFullError` when it is a full disk or quota, with the space left
    on the file system of the file it names (else of ``where``, the folder the job writes
    under: pyarrow and plain writes name no file); ``exc`` itself otherwise."""
    if not isinstance(exc, OSError) or isinstance(exc, DiskFullError):
        return exc
    folder = Path(exc.filename).parent if isinstance(exc.filename, str) else Path(where)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return disk_full(exc, folder) or exc


class SubjectError(Exception):
    """A problem with one subject's data. ``reason`` is a machine-readable code (e.g.
    ``stats_missing``), ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
