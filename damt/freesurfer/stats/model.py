"""What a parsed FreeSurfer stats file is: its ``# Measure`` lines, its table and its header."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

_RELEASE = re.compile(r"v?(\d+\.\d+(?:\.\d+)?(?:-(?:alpha|beta|rc)\d*)?)")
# FreeSurfer 5.x/6.0 write an RCS id, "$Id: mri_segstats.c,v 1.75.2.9 2013/02/16 00:09:33 ...$":
# the date of the program's last change before its release.
_RCS_DATE = re.compile(r"\$Id: \S+,v [\d.]+ (\d{4})/(\d{2})/(\d{2}) ")


class StatsParseError(ValueError):
    """A stats file that cannot be read or parsed. ``str()`` is ``path:line: message``.

    ``reason`` is ``malformed`` (the text is wrong) or ``unreadable`` (the file cannot be read).
    """

    def __init__(self, path: str | Path, line: int | None, message: str, reason: str = "malformed"):
        self.path = str(path)
        self.line = line
        self.message = message
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class Measure(NamedTuple):
    """One ``# Measure KEY, NAME, DESCRIPTION, VALUE, UNIT`` line (canonical key and name)."""

    key: str
    name: str
    description: str
    value: float
    unit: str
    key_original: str
    name_original: str
    line: int


@dataclass
class StatsTable:
    """The table of a stats file: one row per structure, numeric columns as floats."""

    columns: tuple[str, ...]  # numeric column headers, in file order (StructName left out)
    units: tuple[str, ...]  # unit of each numeric column ("" where the file gives none)
    structures: list[str]  # canonical names
    structures_original: list[str]
    values: list[list[float]]  # one list per row, aligned with ``columns``
    lines: list[int]  # line number of each row


def _header_field(key: str) -> property:
    """A ``# key value`` header line of a stats file, "" when absent."""
    return property(lambda self: self.header.get(key, ""), doc=f"The ``{key}`` header line.")


@dataclass
class StatsFile:
    """A parsed stats file."""

    path: str
    kind: str  # canonical kind (see damt.freesurfer.harmonize), or the file's stem if unknown
    hemisphere: str  # "lh", "rh" or ""
    header: dict[str, str]  # "# key value" header lines (first occurrence of each key)
    measures: list[Measure]
    table: StatsTable | None
    # Values written as nan/inf (bert's ?h.w-g.pct.stats has "-nan"): kept as missing (NaN),
    # one "line N: what = token" note each.
    nonfinite: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    generating_program = _header_field("generating_program")
    cvs_version = _header_field("cvs_version")
    subject_name = _header_field("subjectname")
    creation_time = _header_field("CreationTime")

    @property
    def rcs_date(self) -> str:
        """``YYYY/MM/DD`` of the RCS id in ``cvs_version`` (FreeSurfer 5.x/6.0), else ""."""
        match = _RCS_DATE.search(self.cvs_version)
        return "/".join(match.groups()) if match else ""

    @property
    def fs_version(self) -> str:
        """FreeSurfer release from ``cvs_version`` (7.x writes ``7.2.0``; 5.x/6.0 write an RCS
        ``$Id ...$`` that names no release: then "")."""
        match = _RELEASE.fullmatch(self.cvs_version)
        return match.group(1) if match else ""

    def metadata(self) -> dict:
        """Header facts as a JSON-ready dict (stored with the long table)."""
        units = {}
        if self.table is not None:
            units = dict(zip(self.table.columns, self.table.units, strict=True))
        return {
            "kind": self.kind,
            "hemisphere": self.hemisphere,
            "generating_program": self.generating_program,
            "cvs_version": self.cvs_version,
            "fs_version": self.fs_version,
            "subject_name": self.subject_name,
            "creation_time": self.creation_time,
            "title": self.header.get("Title") or self.header.get("Table", ""),
            "units": units,
            "n_measures": len(self.measures),
            "n_rows": len(self.table.structures) if self.table is not None else 0,
        }
