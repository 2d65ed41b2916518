"""Parser of the ``stats/*.stats`` files ``recon-all`` writes (FreeSurfer 5.x, 6.x and 7.x).

One parser reads every tabular stats file (``aseg``, ``wmparc``, ``?h.aparc*``, ``?h.BA_exvivo*``,
``?h.w-g.pct``), the header-only ``brainvol.stats``, every ``# Measure`` line and the header
metadata. Version differences are handled by looking at the file, never by a version switch:
``# Measure`` lines with a missing comma (6.0), integers without a decimal point, stray spaces,
CRLF line ends and renamed structures (through :mod:`damt.freesurfer.harmonize`).

Errors name the file and line (``path:line: message``). The parser is plain Python on purpose:
it is many times faster than going through pandas for files of a few dozen rows.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from damt.errors import SubjectError
from damt.freesurfer.harmonize import (
    KINDS,
    FileKind,
    canonical_measure,
    canonical_structures,
    classify_stats_file,
    label_kind,
    stats_file_name,
)
from damt.freesurfer.recon import (
    FASTSURFER,
    FREESURFER,
    build_stamp_version,
    done_fields,
    fastsurfer_version,
    is_fastsurfer,
    release_of,
)

LONG_COLUMNS = (
    "subject_id",
    "source_file",
    "hemisphere",
    "structure",
    "structure_original",
    "measure",
    "value",
    "unit",
)
STRUCT_COLUMN = "StructName"
# Kinds whose files must hold a table; a file of these kinds without one is truncated.
_TABLE_KINDS = frozenset(k for k in KINDS if k != "brainvol")
_RELEASE = re.compile(r"v?(\d+\.\d+(?:\.\d+)?(?:-(?:alpha|beta|rc)\d*)?)")
# FreeSurfer 5.x/6.0 write an RCS id, "$Id: mri_segstats.c,v 1.75.2.9 2013/02/16 00:09:33 ...$":
# the date of the program's last change before its release.
_RCS_DATE = re.compile(r"\$Id: \S+,v [\d.]+ (\d{4})/(\d{2})/(\d{2}) ")
# The last day a program in a release can have changed: the 5.3.0 release (2013-05) ends the
# 5.x series; later RCS ids are 6.0 (7.x writes the release instead of an RCS id).
_RCS_SERIES = (("2013/05/31", "5.x"), ("9999/12/31", "6.0"))
_LABEL_SNIFF_BYTES = 4096


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


def _number(text: str, path: str, lineno: int, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise StatsParseError(path, lineno, f"{what}: {text!r} is not a number") from None


def _parse_measure(rest: str, path: str, lineno: int) -> Measure:
    parts = [p.strip() for p in rest.split(",")]
    if len(parts) == 4:
        key, second, third, fourth = parts
        name, _, description = second.partition(" ")
        if description and _is_number(third) and not _is_number(fourth):
            # FreeSurfer 6.0 writes some lines without the comma after the name:
            # "# Measure Cortex, CortexVol Total cortical gray matter volume, 456213.1, mm^3"
            parts = [key, name, description.strip(), third, fourth]
    elif len(parts) > 5:
        # A comma inside the description: the value and the unit are still the last two fields.
        parts = [parts[0], parts[1], ", ".join(parts[2:-2]), parts[-2], parts[-1]]
    if len(parts) != 5 or not parts[0] or not parts[1]:
        raise StatsParseError(
            path,
            lineno,
            f"'# Measure' line has {len(parts)} comma-separated fields, expected 5 "
            "(key, name, description, value, unit)",
        )
    key_orig, name_orig, description, value_text, unit = parts
    value = _number(value_text, path, lineno, f"measure {name_orig}")
    key, name = canonical_measure(key_orig, name_orig)
    return Measure(key, name, description, value, unit, key_orig, name_orig, lineno)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_stats_text(
    text: str, path: str | Path = "<text>", kind: str = "", hemisphere: str = ""
) -> StatsFile:
    """Parse the text of a stats file; ``path`` is used in error messages.

    ``kind`` (see :data:`damt.freesurfer.harmonize.KINDS`) selects the structure renames and
    whether a table is required; an empty kind parses any mri_segstats /
    mris_anatomical_stats-style file without renaming. Raises :class:`StatsParseError`.
    """
    path = str(path)
    if not text.strip():
        raise StatsParseError(path, 1, "empty file")
    if "\x00" in text:
        lineno = text.count("\n", 0, text.index("\x00")) + 1
        raise StatsParseError(path, lineno, "binary data (NUL bytes): the file is corrupt")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    elif lines[-1].strip():
        # recon-all ends every line; a last line without its end was cut off mid-write, and
        # its last number may be cut short too ("0.451" → "0.4").
        raise StatsParseError(path, len(lines), "last line has no line end: the file is truncated")

    header: dict[str, str] = {}
    measures: list[Measure] = []
    measure_lines: dict[str, int] = {}
    colheaders: list[str] | None = None
    colheaders_line = 0
    units_by_index: dict[int, str] = {}
    declared_cols: tuple[int, int] | None = None  # (value, line)
    declared_rows: tuple[int, int] | None = None
    table_hint_line = 0  # first TableCol/NTableCols line: the file announces a table
    raw_rows: list[str] = []
    row_lines: list[int] = []

    for lineno, line in enumerate(lines, 1):
        if line[:1] == "#":
            key, _, rest = line[1:].strip().partition(" ")
            if key == "TableCol":
                table_hint_line = table_hint_line or lineno
                fields = rest.split(None, 2)
                if len(fields) == 3 and fields[1] == "Units":
                    units_by_index[int(fields[0]) if fields[0].isdigit() else -1] = fields[2]
            elif key == "Measure":
                m = _parse_measure(rest, path, lineno)
                if m.name in measure_lines:
                    raise StatsParseError(
                        path,
                        lineno,
                        f"duplicate '# Measure' {m.name} (first at line {measure_lines[m.name]})",
                    )
                measure_lines[m.name] = lineno
                measures.append(m)
            elif key == "ColHeaders":
                if colheaders is not None:
                    raise StatsParseError(
                        path,
                        lineno,
                        f"second '# ColHeaders' line (first at line {colheaders_line})",
                    )
                colheaders = rest.split()
                colheaders_line = lineno
            elif key in ("NTableCols", "NRows"):
                table_hint_line = table_hint_line or lineno
                rest = rest.strip()
                if not rest.isdigit():
                    raise StatsParseError(path, lineno, f"'# {key}' {rest!r} is not a count")
                if key == "NRows":
                    declared_rows = (int(rest), lineno)
                else:
                    declared_cols = (int(rest), lineno)
            elif key and key not in header:
                header[key] = rest.strip()
        elif line.strip():
            if colheaders is None:
                hint = (
                    f" (the table is announced at line {table_hint_line})"
                    if table_hint_line
                    else ""
                )
                raise StatsParseError(
                    path, lineno, f"data row before any '# ColHeaders' line{hint}"
                )
            raw_rows.append(line)
            row_lines.append(lineno)

    if not header and not measures and colheaders is None:
        raise StatsParseError(
            path, len(lines), "no header, '# Measure' line or table: not a FreeSurfer stats file"
        )
    table = None
    if colheaders is not None:
        table = _parse_table(
            path, kind, colheaders, colheaders_line, units_by_index, raw_rows, row_lines
        )
        if declared_cols is not None and declared_cols[0] != len(colheaders):
            raise StatsParseError(
                path,
                colheaders_line,
                f"'# ColHeaders' names {len(colheaders)} columns but '# NTableCols' "
                f"(line {declared_cols[1]}) says {declared_cols[0]}",
            )
        if declared_rows is not None and declared_rows[0] != len(table.structures):
            raise StatsParseError(
                path,
                len(lines),
                f"the table has {len(table.structures)} rows but '# NRows' "
                f"(line {declared_rows[1]}) says {declared_rows[0]}: the file is truncated",
            )
    elif table_hint_line or kind in _TABLE_KINDS:
        where = f"announced at line {table_hint_line} " if table_hint_line else ""
        raise StatsParseError(
            path,
            len(lines),
            f"no '# ColHeaders' line: the table {where}is missing (truncated file?)",
        )
    nonfinite = _nonfinite_to_nan(measures, table)
    return StatsFile(
        path, kind, hemisphere or header.get("hemi", ""), header, measures, table, nonfinite
    )


def _nonfinite_to_nan(measures: list[Measure], table: StatsTable | None) -> list[str]:
    """Replace nan/inf values by NaN (missing) in place; one note per value replaced."""
    notes: list[str] = []
    for i, m in enumerate(measures):
        if not math.isfinite(m.value):
            notes.append(f"line {m.line}: measure {m.name_original} = {m.value}")
            measures[i] = m._replace(value=math.nan)
    if table is not None:
        for row, original, lineno in zip(
            table.values, table.structures_original, table.lines, strict=True
        ):
            for j, v in enumerate(row):
                if not math.isfinite(v):
                    notes.append(f"line {lineno}: {table.columns[j]} of {original} = {v}")
                    row[j] = math.nan
    return notes


def _parse_table(
    path: str,
    kind: str,
    colheaders: list[str],
    colheaders_line: int,
    units_by_index: dict[int, str],
    raw_rows: list[str],
    row_lines: list[int],
) -> StatsTable:
    if STRUCT_COLUMN not in colheaders:
        raise StatsParseError(path, colheaders_line, f"'# ColHeaders' has no {STRUCT_COLUMN}")
    if len(set(colheaders)) != len(colheaders):
        dup = next(c for c, n in Counter(colheaders).items() if n > 1)
        raise StatsParseError(path, colheaders_line, f"'# ColHeaders' names {dup} twice")
    if not raw_rows:
        raise StatsParseError(
            path, colheaders_line, "'# ColHeaders' is followed by no row: the file is truncated"
        )
    ncol = len(colheaders)
    si = colheaders.index(STRUCT_COLUMN)
    numeric = tuple(c for c in colheaders if c != STRUCT_COLUMN)
    units = tuple(units_by_index.get(i, "") for i, c in enumerate(colheaders, 1) if i - 1 != si)
    # Bulk operations first (the files are small but many); the error paths below find the line.
    rows = [line.split() for line in raw_rows]
    if any(len(f) != ncol for f in rows):
        i = next(i for i, f in enumerate(rows) if len(f) != ncol)
        raise StatsParseError(
            path,
            row_lines[i],
            f"row has {len(rows[i])} fields but '# ColHeaders' (line {colheaders_line}) "
            f"names {ncol}",
        )
    originals = [f.pop(si) for f in rows]
    try:
        values = [list(map(float, f)) for f in rows]
    except ValueError:
        for fields, original, lineno in zip(rows, originals, row_lines, strict=True):
            for col, text in zip(numeric, fields, strict=True):
                _number(text, path, lineno, f"column {col} of {original}")
        raise
    structures = canonical_structures(kind, originals) if kind else originals
    if len(set(structures)) != len(structures):
        seen: dict[str, int] = {}
        for name, original, lineno in zip(structures, originals, row_lines, strict=True):
            if name in seen:
                same = "" if name == original else f" ({original} after renaming)"
                raise StatsParseError(
                    path, lineno, f"duplicate structure {name}{same} (first at line {seen[name]})"
                )
            seen[name] = lineno
    return StatsTable(numeric, units, structures, originals, values, list(row_lines))


def read_text(path: str | Path) -> str:
    """Read a stats file as text; an unreadable file raises :class:`StatsParseError`."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise StatsParseError(
            path, None, f"cannot read the file: {exc.strerror or exc}", reason="unreadable"
        ) from exc
    # Header comments may hold paths or user names in any encoding; the numbers are ASCII.
    return data.decode("utf-8", errors="replace")


def parse_stats_file(path: str | Path, kind: str | None = None, hemisphere: str = "") -> StatsFile:
    """Parse one stats file. The kind and hemisphere come from the file name unless given."""
    if kind is None:
        fk = classify_stats_file(os.path.basename(path))
        kind, hemisphere = (fk.kind, fk.hemisphere) if fk else ("", hemisphere)
    return parse_stats_text(read_text(path), path, kind, hemisphere)


# --- one subject ------------------------------------------------------------------------------


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


# --- the long table ---------------------------------------------------------------------------


def long_columns(subject_id: str, files: Iterable[StatsFile]) -> dict[str, list]:
    """The long table as column lists (see :data:`LONG_COLUMNS`).

    ``# Measure`` lines become rows with ``structure`` = the measure's key and ``measure`` = its
    name (``BrainSeg`` / ``BrainSegVol``); table cells become one row per structure and numeric
    column (``Left-Hippocampus`` / ``Volume_mm3``).
    """
    src: list[str] = []
    hemi: list[str] = []
    struct: list[str] = []
    orig: list[str] = []
    meas: list[str] = []
    value: list[float] = []
    unit: list[str] = []
    for f in files:
        n_before = len(value)
        for m in f.measures:
            struct.append(m.key)
            orig.append(m.key_original)
            meas.append(m.name)
            value.append(m.value)
            unit.append(m.unit)
        t = f.table
        if t is not None:
            ncol = len(t.columns)
            for name, original, row in zip(
                t.structures, t.structures_original, t.values, strict=True
            ):
                struct.extend([name] * ncol)
                orig.extend([original] * ncol)
                meas.extend(t.columns)
                value.extend(row)
                unit.extend(t.units)
        n = len(value) - n_before
        src.extend([f.name] * n)
        hemi.extend([f.hemisphere] * n)
    return {
        "subject_id": [subject_id] * len(value),
        "source_file": src,
        "hemisphere": hemi,
        "structure": struct,
        "structure_original": orig,
        "measure": meas,
        "value": value,
        "unit": unit,
    }


def long_table(subject: SubjectStats):
    """The subject's long table as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(long_columns(subject.subject_id, subject.files), columns=list(LONG_COLUMNS))


def subject_metadata(subject: SubjectStats) -> dict:
    """JSON-ready facts about a parsed subject (stored in the long table's Parquet metadata)."""
    return {
        "subject_id": subject.subject_id,
        "stats_dir": subject.stats_dir,
        "fs_version": subject.fs_version,
        "fs_version_source": subject.fs_version_source,
        "segmenter": subject.segmenter,
        "segmenter_version": subject.segmenter_version or subject.fs_version,
        "files": {f.name: f.metadata() for f in subject.files},
        "skipped": subject.skipped,
        "file_errors": subject.file_errors(),
    }


def write_long_table(subject: SubjectStats, path: str | Path) -> None:
    """Write the subject's long table as Parquet, header facts under the metadata key ``damt``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = long_columns(subject.subject_id, subject.files)
    schema = pa.schema(
        [(c, pa.float64() if c == "value" else pa.string()) for c in LONG_COLUMNS],
        metadata={"damt": json.dumps(subject_metadata(subject), sort_keys=True)},
    )
    table = pa.Table.from_pydict(cols, schema=schema)
    pq.write_table(table, str(path), compression="zstd")


def read_long_table(path: str | Path, source_files: Iterable[str] | None = None):
    """Read a long table written by :func:`write_long_table` (optionally only some files)."""
    import pyarrow.parquet as pq

    filters = None
    if source_files is not None:
        filters = [("source_file", "in", sorted(set(source_files)))]
    return pq.read_table(str(path), filters=filters).to_pandas()


def read_long_metadata(path: str | Path) -> dict:
    """The ``damt`` metadata of a long table."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(str(path)).metadata or {}
    return json.loads(meta.get(b"damt", b"{}"))


def stats_to_file(
    subject_dir: str | Path,
    out: str | Path,
    subject_id: str | None = None,
    keep_going: bool = False,
) -> tuple[int, list[str]]:
    """What ``damt stats`` does: parse a subject's ``stats/`` into ``out`` (.parquet/.tsv/.csv).

    Returns the exit status (0 written, 1 some files unparsable and nothing written without
    ``keep_going``, 2 nothing to parse) and the messages for the user.
    """
    out = Path(out)
    if out.suffix not in (".parquet", ".tsv", ".csv"):
        raise ValueError(f"output {out} must end in .parquet, .tsv or .csv")
    try:
        subject = parse_subject_stats(subject_dir, subject_id)
    except SubjectError as exc:
        return 2, [f"error: {exc.detail} ({exc.reason})"]
    messages = [f"error: {message}" for message in subject.file_errors().values()]
    if not subject.files:
        return 2, [*messages, f"error: no stats file parsed in {subject.stats_dir}"]
    if subject.errors and not keep_going:
        return 1, [
            *messages,
            f"{len(subject.errors)} file(s) could not be parsed; nothing written "
            "(--keep-going writes the others)",
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        write_long_table(subject, out)
    else:
        long_table(subject).to_csv(out, sep="\t" if out.suffix == ".tsv" else ",", index=False)
    skipped = f"; skipped {', '.join(subject.skipped)}" if subject.skipped else ""
    messages.append(
        f"{subject.subject_id}: parsed {len(subject.files)} stats file(s) "
        f"(FreeSurfer {subject.fs_version or 'version unknown'}){skipped} → {out}"
    )
    return 0, messages
