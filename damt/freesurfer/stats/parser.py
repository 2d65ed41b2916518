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

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from damt.freesurfer.harmonize import (
    KINDS,
    canonical_measure,
    canonical_structures,
    classify_stats_file,
)
from damt.freesurfer.stats.model import Measure, StatsFile, StatsParseError, StatsTable

STRUCT_COLUMN = "StructName"
# Kinds whose files must hold a table; a file of these kinds without one is truncated.
_TABLE_KINDS = frozenset(k for k in KINDS if k != "brainvol")


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
    lines = _lines(text, path)
    scan = _scan(lines, path)
    if not scan.header and not scan.measures and scan.colheaders is None:
        raise StatsParseError(
            path, len(lines), "no header, '# Measure' line or table: not a FreeSurfer stats file"
        )
    table = _checked_table(scan, path, kind, len(lines))
    nonfinite = _nonfinite_to_nan(scan.measures, table)
    hemisphere = hemisphere or scan.header.get("hemi", "")
    return StatsFile(path, kind, hemisphere, scan.header, scan.measures, table, nonfinite)


def _lines(text: str, path: str) -> list[str]:
    """The file's lines (any line end), refusing empty, binary and truncated text."""
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
    return lines


@dataclass
class _Scan:
    """What one pass over the lines found, before the table is parsed."""

    header: dict[str, str]
    measures: list[Measure]
    colheaders: list[str] | None
    colheaders_line: int
    units_by_index: dict[int, str]
    declared_cols: tuple[int, int] | None  # (value, line)
    declared_rows: tuple[int, int] | None
    table_hint_line: int  # first TableCol/NTableCols line: the file announces a table
    raw_rows: list[str]
    row_lines: list[int]


def _scan(lines: list[str], path: str) -> _Scan:
    """Header lines, ``# Measure`` lines, the table's declarations and its raw rows."""
    header: dict[str, str] = {}
    measures: list[Measure] = []
    measure_lines: dict[str, int] = {}
    colheaders: list[str] | None = None
    colheaders_line = 0
    units_by_index: dict[int, str] = {}
    declared_cols: tuple[int, int] | None = None
    declared_rows: tuple[int, int] | None = None
    table_hint_line = 0
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
                    first = measure_lines[m.name]
                    raise StatsParseError(
                        path, lineno, f"duplicate '# Measure' {m.name} (first at line {first})"
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
    return _Scan(
        header, measures, colheaders, colheaders_line, units_by_index, declared_cols,
        declared_rows, table_hint_line, raw_rows, row_lines,
    )  # fmt: skip


def _checked_table(scan: _Scan, path: str, kind: str, n_lines: int) -> StatsTable | None:
    """The table, checked against the counts the header declares; None for a file without one
    (an error where the header announces a table or the kind requires one)."""
    if scan.colheaders is None:
        if scan.table_hint_line or kind in _TABLE_KINDS:
            where = f"announced at line {scan.table_hint_line} " if scan.table_hint_line else ""
            raise StatsParseError(
                path,
                n_lines,
                f"no '# ColHeaders' line: the table {where}is missing (truncated file?)",
            )
        return None
    table = _parse_table(
        path, kind, scan.colheaders, scan.colheaders_line, scan.units_by_index, scan.raw_rows,
        scan.row_lines,
    )  # fmt: skip
    cols, rows = scan.declared_cols, scan.declared_rows
    if cols is not None and cols[0] != len(scan.colheaders):
        raise StatsParseError(
            path,
            scan.colheaders_line,
            f"'# ColHeaders' names {len(scan.colheaders)} columns but '# NTableCols' "
            f"(line {cols[1]}) says {cols[0]}",
        )
    if rows is not None and rows[0] != len(table.structures):
        raise StatsParseError(
            path,
            n_lines,
            f"the table has {len(table.structures)} rows but '# NRows' "
            f"(line {rows[1]}) says {rows[0]}: the file is truncated",
        )
    return table


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
