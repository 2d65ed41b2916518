"""How far a subject's recon got and what made it, from FreeSurfer's or FastSurfer's status files.

Pure reading of the small files in ``scripts/`` (and one stats header); discovery decides what
to do with the answer. What is read, per segmenter:

- FreeSurfer (``recon-all``): ``scripts/IsRunning.*`` (a run in progress, removed at its end),
  ``scripts/recon-all.error`` (a failed run; a later successful run writes a newer
  ``recon-all.done``), ``scripts/recon-all.done`` (``KEY VALUE`` lines: ``VERSION``,
  ``RUNTIME_HOURS``; a done file that reports errors counts as failed), the last ``ERROR`` line of
  ``scripts/recon-all.log`` as the reason, and ``scripts/build-stamp.txt``.
- FastSurfer: recognised by ``scripts/deep-seg.log``, ``scripts/recon-surf.log``,
  ``stats/aseg+DKT.stats`` or ``mri/aparc.DKTatlas+aseg.deep.mgz``. Its surface module calls
  ``recon-all`` for single steps, which rewrite ``recon-all.done`` with "finished without error"
  even when the FastSurfer run failed, so ``recon-all.done`` says nothing here: a surface run is
  complete with ``scripts/recon-surf.done``, failed when ``recon-surf.log`` ends in an error, and
  otherwise still running. A segmentation-only run (``--seg_only``) has no ``recon-surf.*`` at
  all. The version is the last ``Version:`` line of ``deep-seg.log`` (one block per invocation,
  v2.2+), else ``# FastSurfer_version`` of ``aseg+DKT.stats`` (v2.3+), else the release series
  that the command echoed into ``deep-seg.log`` tells (``1.x``: ``eval.py``; ``2.0``:
  ``--aparc_aseg_segfile``; ``2.1``: ``--asegdkt_segfile``).

A running recon (either segmenter) also tells when anything in ``scripts/`` last changed
(``ReconStatus.last_change``): a killed run leaves its ``IsRunning.*`` marker, or a surface log
without an end, behind, and only its age tells it from a live one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

FREESURFER, FASTSURFER = "freesurfer", "fastsurfer"
DONE, FAILED, RUNNING = "done", "failed", "running"
UNKNOWN = "unknown"  # no status file at all (e.g. a copy of mri/ and stats/ only)

# Files whose presence marks a FastSurfer subject folder.
FASTSURFER_MARKERS = (
    "scripts/deep-seg.log",
    "scripts/recon-surf.log",
    "stats/aseg+DKT.stats",
    "mri/aparc.DKTatlas+aseg.deep.mgz",
)
# Status files whose change means "this subject was (re)processed" (part of the fingerprint).
STATUS_FILES = (
    "scripts/recon-all.done",
    "scripts/recon-all.error",
    "scripts/recon-surf.done",
    "scripts/build-stamp.txt",
)
_TAIL_BYTES = 64 * 1024  # logs grow to megabytes; the reason for a failure is at their end
_RELEASE = re.compile(r"v?(\d+\.\d+(?:\.\d+)?(?:-(?:alpha|beta|rc)\d*)?)")
_BUILD_STAMP = re.compile(r"freesurfer-.*?[-_]v?(\d+\.\d+\.\d+(?:-(?:alpha|beta|rc)\d*)?)")
# Lines that report a failure. Plain "error" is left out: logs print "rms error = 0.2" and
# "finished without error" on success.
_ERROR_LINE = re.compile(r"\bERROR\b|Error:|^Traceback|\*\*\*FAILED|\bKilled\b|exited with ERRORS")
_TAIL_LINES = 25  # a failed run stops right after its error
_FS_VERSION_LINE = re.compile(r"^\s*Version:\s*(\S+)", re.M)
_FS_VERSION_HEADER = re.compile(r"^# FastSurfer_version\s+(\S+)", re.M)
_DONE_IGNORED_KEYS = ("CMDARGS", "CMDPATH", "SUBJECT", "UNAME", "USER", "HOST")
# What run_fastsurfer.sh of the releases before v2.2 (no ``Version:`` line) echoed into
# deep-seg.log, newest first: v1.x ran eval.py, v2.0 passed --aparc_aseg_segfile, v2.1 renamed
# it --asegdkt_segfile (v2.1 still accepts the old name, but echoes the new one).
_LEGACY_SEG_LOG = (
    ("Log file for fastsurfercnn eval.py", "1.x"),
    ("--asegdkt_segfile", "2.1"),
    ("--aparc_aseg_segfile", "2.0"),
)
# Series whose segmentation module writes no mri/orig_nu.mgz (v2.1 added it).
FASTSURFER_BEFORE_ORIG_NU = ("1.x", "2.0")


@dataclass(frozen=True)
class ReconStatus:
    """What the status files of one subject folder say."""

    segmenter: str  # "freesurfer" or "fastsurfer"
    state: str  # done | failed | running | unknown
    detail: str = ""  # for failed/running: the file and the line that say so
    segmenter_version: str = ""  # FreeSurfer release, or FastSurfer's version
    fs_version: str = ""  # FreeSurfer release (for FastSurfer: of its bundled recon-all)
    recon_hours: str = ""  # wall time of the recon in hours, as the done file writes it
    last_change: float = 0.0  # running: newest mtime in scripts/ (seconds since the epoch)


def _read(path: str | Path, tail: bool = False) -> str | None:
    """Text of a small status file (its last bytes for ``tail``); None when absent/unreadable."""
    try:
        with open(path, "rb") as fh:
            if tail:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - _TAIL_BYTES))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def done_fields(text: str) -> dict[str, str]:
    """``KEY VALUE`` lines of a ``recon-all.done``/``recon-surf.done``/``recon-all.error`` file."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().lstrip("#").strip().partition(" ")
        if key.isupper() and key not in out:
            out[key] = value.strip()
    return out


def release_of(text: str) -> str:
    """FreeSurfer release at the start of ``text`` (``7.2.0-beta (freesurfer-…)`` → 7.2.0-beta)."""
    match = _RELEASE.match(text.strip())
    if match:
        return match.group(1)
    match = _BUILD_STAMP.search(text)
    return match.group(1) if match else ""


def build_stamp_version(subject_dir: str | Path) -> str:
    """FreeSurfer release named by ``scripts/build-stamp.txt`` ("" when absent or unknown)."""
    text = _read(os.path.join(subject_dir, "scripts", "build-stamp.txt"))
    if text is None:
        return ""
    match = _BUILD_STAMP.match(text.strip())
    return match.group(1) if match else ""


def last_error_line(text: str) -> str:
    """The last line of a log that reports an error, preferring the cause over the summary.

    recon-all ends a failed log with "recon-all -s X exited with ERRORS at <date>"; the line
    before it that names an error says why.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()][-_TAIL_LINES:]
    hits = [line for line in lines if _ERROR_LINE.search(line)]
    causes = [line for line in hits if "exited with ERRORS" not in line and line[:9] != "Traceback"]
    chosen = causes[-1] if causes else (hits[-1] if hits else "")
    return chosen[:300]


def _done_reports_failure(fields: dict[str, str], text: str) -> str:
    """The line of a done file that reports a failure ("" when it reports none)."""
    status = fields.get("STATUS") or fields.get("EXIT_STATUS") or ""
    if status.strip() not in ("", "0"):
        return f"STATUS {status.strip()}"
    for line in text.splitlines():
        key = line.strip().partition(" ")[0]
        if key not in _DONE_IGNORED_KEYS and "exited with ERRORS" in line:
            return line.strip()
    return ""


def is_fastsurfer(subject_dir: str | Path) -> bool:
    """True when the folder holds any of FastSurfer's own files (:data:`FASTSURFER_MARKERS`)."""
    return any(os.path.lexists(os.path.join(subject_dir, rel)) for rel in FASTSURFER_MARKERS)


def fastsurfer_version(subject_dir: str | Path) -> str:
    """FastSurfer's version: last ``Version:`` of ``deep-seg.log``, else the stats header, else
    the release series (``1.x``, ``2.0``, ``2.1``) the log's echoed command tells."""
    folder = Path(subject_dir)
    log_text = _read(folder / "scripts" / "deep-seg.log")
    if log_text:
        found = _FS_VERSION_LINE.findall(log_text)
        if found:
            return found[-1]
    stats = _read(folder / "stats" / "aseg+DKT.stats")
    if stats:
        match = _FS_VERSION_HEADER.search(stats)
        if match:
            return match.group(1)
    return next((series for mark, series in _LEGACY_SEG_LOG if mark in (log_text or "")), "")


def last_change(scripts: str | Path) -> float:
    """Newest modification time of ``scripts/`` and its entries (0.0 if it cannot be read)."""
    try:
        with os.scandir(scripts) as entries:
            times = [e.stat(follow_symlinks=False).st_mtime for e in entries]
        return max([os.stat(scripts).st_mtime, *times])
    except OSError:
        return 0.0


def _running(scripts: str | Path) -> str:
    try:
        names = sorted(e.name for e in os.scandir(scripts) if e.name.startswith("IsRunning."))
    except OSError:
        return ""
    return names[0] if names else ""


def recon_status(subject_dir: str | Path) -> ReconStatus:
    """Read the status files of a subject folder (see the module docstring)."""
    folder = Path(subject_dir)
    # os.path, not pathlib, for the files every subject has: discovery reads 60,000 of them.
    scripts = os.path.join(subject_dir, "scripts")
    running = _running(scripts)
    stamp = build_stamp_version(subject_dir)
    if is_fastsurfer(subject_dir):
        return _fastsurfer_status(folder, running, stamp)
    done_text = _read(os.path.join(scripts, "recon-all.done"))
    fields = done_fields(done_text) if done_text is not None else {}
    version = release_of(fields.get("VERSION", "")) or stamp
    hours = fields.get("RUNTIME_HOURS", "")
    base = {"segmenter": FREESURFER, "segmenter_version": version, "fs_version": version}
    if running:
        return ReconStatus(
            state=RUNNING,
            detail=f"scripts/{running} exists: recon-all is running",
            last_change=last_change(scripts),
            **base,
        )
    error_path = os.path.join(scripts, "recon-all.error")
    if os.path.exists(error_path) and not _newer(
        os.path.join(scripts, "recon-all.done"), error_path
    ):
        why = last_error_line(_read(os.path.join(scripts, "recon-all.log"), tail=True) or "")
        why = why or last_error_line(_read(error_path) or "")
        detail = "scripts/recon-all.error exists" + (f": {why}" if why else "")
        return ReconStatus(state=FAILED, detail=detail, **base)
    if done_text is not None:
        failure = _done_reports_failure(fields, done_text)
        if failure:
            log_text = _read(os.path.join(scripts, "recon-all.log"), tail=True)
            why = last_error_line(log_text or "") or failure
            return ReconStatus(
                state=FAILED, detail=f"scripts/recon-all.done reports a failure: {why}", **base
            )
        return ReconStatus(state=DONE, recon_hours=hours, **base)
    return ReconStatus(state=UNKNOWN, **base)


def _newer(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` exists and was written after ``b``."""
    try:
        return os.stat(a).st_mtime_ns > os.stat(b).st_mtime_ns
    except OSError:
        return False


def _fastsurfer_status(folder: Path, running: str, stamp: str) -> ReconStatus:
    scripts = folder / "scripts"
    base = {"segmenter": FASTSURFER, "segmenter_version": fastsurfer_version(folder)}
    done_text = _read(scripts / "recon-surf.done")
    if done_text is not None:
        fields = done_fields(done_text)
        return ReconStatus(
            state=DONE, fs_version=stamp, recon_hours=fields.get("RUNTIME_HOURS", ""), **base
        )
    surf_log = _read(scripts / "recon-surf.log", tail=True)
    if surf_log is not None:
        why = last_error_line(surf_log)
        if why:
            return ReconStatus(
                state=FAILED,
                detail=f"scripts/recon-surf.log ends without recon-surf.done: {why}",
                fs_version=stamp,
                **base,
            )
        detail = (
            f"scripts/{running} exists" if running else "scripts/recon-surf.log has no error"
        ) + " and there is no recon-surf.done yet: the surface module is running"
        return ReconStatus(
            state=RUNNING,
            detail=detail,
            fs_version=stamp,
            last_change=last_change(scripts),
            **base,
        )
    seg_log = _read(scripts / "deep-seg.log", tail=True)
    if seg_log is not None:
        # The segmentation log's last invocation is what counts (the log is appended to).
        last = seg_log.rsplit("Version:", 1)[-1]
        why = last_error_line(last)
        if why:
            return ReconStatus(
                state=FAILED, detail=f"scripts/deep-seg.log reports an error: {why}", **base
            )
    return ReconStatus(state=DONE, **base)
