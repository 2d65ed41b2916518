"""One subject's ``stats/`` folder: which files to parse, all of them parsed, the FreeSurfer
version they tell, and the files the result depends on."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from damt.errors import SubjectError
from damt.freesurfer.harmonize import FileKind, classify_stats_file, label_kind, stats_file_name
from damt.freesurfer.recon import (
    FASTSURFER,
    FREESURFER,
    build_stamp_version,
    done_fields,
    fastsurfer_version,
    is_fastsurfer,
    release_of,
)
from damt.freesurfer.stats.model import StatsFile, StatsParseError
from damt.freesurfer.stats.parser import parse_stats_text, read_text

# The last day a program in a release can have changed: the 5.3.0 release (2013-05) ends the
# 5.x series; later RCS ids are 6.0 (7.x writes the release instead of an RCS id).
_RCS_SERIES = (("2013/05/31", "5.x"), ("9999/12/31", "6.0"))
_LABEL_SNIFF_BYTES = 4096


@dataclass
class SubjectStats:
    """Everything parsed from one subject's ``stats/`` folder."""

    subject_id: str
    stats_dir: str
    files: list[StatsFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # file names the package does not model
    errors: dict[str, StatsParseError] = field(default_factory=dict)  # file name → error
    fs_version: str = ""
    # "stats header", "build-stamp", "recon-all.done", "cvs_version date YYYY/MM/DD" or ""
    fs_version_source: str = ""
    segmenter: str = FREESURFER  # or "fastsurfer" (damt.freesurfer.recon.is_fastsurfer)
    segmenter_version: str = ""  # FastSurfer's version; FreeSurfer's is fs_version

    def file_errors(self) -> dict[str, str]:
        """``{file name: "path:line: message"}``."""
        return {name: str(err) for name, err in sorted(self.errors.items())}


def stats_dir_of(subject_dir: str | Path) -> Path:
    """The ``stats/`` folder of a subject folder."""
    return Path(subject_dir) / "stats"


def list_stats_files(stats_dir: str | Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Split a ``stats/`` folder into files to parse ``(name, kind, hemisphere)`` and skipped names.

    Raises :class:`SubjectError` when the folder is missing or cannot be listed. When two
    files have the same canonical kind (``lh.aparc.DKTatlas40.stats`` next to
    ``lh.aparc.DKTatlas.stats`` after a partial rerun), the FreeSurfer 7 name wins.
    """
    stats_dir = Path(stats_dir)
    try:
        names = sorted(e.name for e in os.scandir(stats_dir) if e.name.endswith(".stats"))
    except FileNotFoundError:
        raise SubjectError("stats_missing", f"{stats_dir} does not exist") from None
    except NotADirectoryError:
        raise SubjectError("stats_missing", f"{stats_dir} is not a folder") from None
    except OSError as exc:
        raise SubjectError(
            "stats_unreadable", f"{stats_dir} cannot be listed: {exc.strerror or exc}"
        ) from None
    chosen: dict[tuple[str, str], str] = {}
    skipped: list[str] = []
    for name in names:
        fk = classify_stats_file(name) or _label_stats_kind(stats_dir / name)
        if fk is None:
            skipped.append(name)
            continue
        slot = (fk.kind, fk.hemisphere)
        if slot in chosen:
            canonical = stats_file_name(*slot)
            keep, drop = (name, chosen[slot]) if name == canonical else (chosen[slot], name)
            chosen[slot] = keep
            skipped.append(drop)
        else:
            chosen[slot] = name
    files = sorted((name, kind, hemi) for (kind, hemi), name in chosen.items())
    return files, sorted(skipped)


def _label_stats_kind(path: Path) -> FileKind | None:
    """Kind of a ``?h.NAME.stats`` file that ``mris_anatomical_stats -l`` wrote, from its header."""
    parts = path.name.split(".")
    if len(parts) < 3 or parts[0] not in ("lh", "rh"):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(_LABEL_SNIFF_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    cmdline = re.search(r"^# cmdline (.*)$", head, re.M)
    if "generating_program mris_anatomical_stats" not in head or cmdline is None:
        return None
    args = cmdline.group(1).split()
    if "-l" not in args or "-a" in args:
        return None
    return FileKind(label_kind(".".join(parts[1:-1])), parts[0])


def recon_done_version(subject_dir: str | Path) -> str:
    """FreeSurfer release of the ``VERSION`` line of ``scripts/recon-all.done`` ("" if none)."""
    try:
        text = (Path(subject_dir) / "scripts" / "recon-all.done").read_text(errors="replace")
    except OSError:
        return ""
    return release_of(done_fields(text).get("VERSION", ""))


def rcs_series(files: Iterable[StatsFile]) -> tuple[str, str]:
    """FreeSurfer series (``5.x``/``6.0``) and the latest RCS date of the files' headers."""
    latest = max((f.rcs_date for f in files if f.rcs_date), default="")
    if not latest:
        return "", ""
    return next(series for end, series in _RCS_SERIES if latest <= end), latest


def parse_subject_stats(subject_dir: str | Path, subject_id: str | None = None) -> SubjectStats:
    """Parse every modelled stats file of a subject folder.

    A file that cannot be read or parsed does not stop the others: it is recorded in
    ``errors``. Raises :class:`SubjectError` when ``stats/`` is missing or unreadable.
    """
    subject_dir = Path(subject_dir)
    stats_dir = stats_dir_of(subject_dir)
    to_parse, skipped = list_stats_files(stats_dir)
    result = SubjectStats(subject_id or subject_dir.name, str(stats_dir), skipped=skipped)
    if is_fastsurfer(subject_dir):
        result.segmenter, result.segmenter_version = FASTSURFER, fastsurfer_version(subject_dir)
    for name, kind, hemi in to_parse:
        path = stats_dir / name
        try:
            result.files.append(parse_stats_text(read_text(path), path, kind, hemi))
        except StatsParseError as exc:
            result.errors[name] = exc
    versions = Counter(f.fs_version for f in result.files if f.fs_version)
    if versions:
        result.fs_version, result.fs_version_source = versions.most_common(1)[0][0], "stats header"
        return result
    for source, version in (
        ("build-stamp", build_stamp_version(subject_dir)),
        ("recon-all.done", recon_done_version(subject_dir)),
    ):
        if version:
            result.fs_version, result.fs_version_source = version, source
            return result
    series, date = rcs_series(result.files)
    if series:
        result.fs_version, result.fs_version_source = series, f"cvs_version date {date}"
    return result


def stats_input_files(subject_dir: str | Path) -> list[Path]:
    """Files a subject's parsed stats depend on: the folder (its mtime changes when files are
    added or removed), every ``*.stats`` file and the build stamp."""
    subject_dir = Path(subject_dir)
    stats_dir = stats_dir_of(subject_dir)
    try:
        names = sorted(e.name for e in os.scandir(stats_dir) if e.name.endswith(".stats"))
    except OSError:
        names = []
    return [
        stats_dir,
        *(stats_dir / n for n in names),
        subject_dir / "scripts" / "build-stamp.txt",
        subject_dir / "scripts" / "recon-all.done",
        subject_dir / "scripts" / "deep-seg.log",
    ]
