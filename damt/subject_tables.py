"""Tables about subjects that people make in spreadsheets (phenotypes, participants): read as
spreadsheets write them, and their ids matched to the cohort's.

A table may start with a byte-order mark, end its lines with CRLF, separate its cells with
``,``, ``;`` or tabs (whichever the header line uses most), quote its cells and pad them with
spaces. Its ids may lack (or add) the BIDS ``sub-`` prefix, and a spreadsheet may have turned an
id of digits into a number (``0050038`` → ``50038``): such an id is matched to the one subject it
can only mean, and the log says so; an id that could mean several subjects is refused with its
rows named.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from damt.manifest import KEY

log = logging.getLogger(__name__)

SEPARATORS = (",", ";", "\t")
_BIDS_PREFIX = "sub-"


class SubjectTableError(ValueError):
    """A subject table that cannot be read as one (the message names the file and the rows)."""


def read_subject_table(path: str | Path, required: Sequence[str] = (KEY,)) -> pd.DataFrame:
    """The table at ``path``, ids as text; ``required`` columns must be there.

    Column names and text cells lose their surrounding spaces; numeric columns are read as
    numbers. Duplicate column names are refused (which one holds the value is unknowable).
    """
    try:
        text = Path(path).read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise SubjectTableError(f"cannot read {path}: {exc.strerror or exc}") from exc
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    header = text.split("\n", 1)[0]
    sep = max(SEPARATORS, key=header.count)
    names = [n.strip() for n in next(csv.reader([header], delimiter=sep), [])]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SubjectTableError(
            f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once; "
            "keep one of each"
        )
    missing = [c for c in required if c not in names]
    if missing:
        raise SubjectTableError(
            f"{path} needs the column(s) {', '.join(missing)} "
            f"(found: {', '.join(n for n in names if n) or 'none'})"
        )
    frame = pd.read_csv(
        io.StringIO(text), sep=sep, dtype={c: str for c in required}, skipinitialspace=True
    )
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].str.strip()
            if column not in required:
                # "52 " was text only because of its padding.
                numbers = pd.to_numeric(frame[column], errors="coerce")
                present = frame[column].notna() & (frame[column] != "")
                if present.any() and numbers.notna().sum() == present.sum():
                    frame[column] = numbers
    return frame


def _spoken(subject_id: str) -> str:
    """What an id says once a spreadsheet is done with it: no ``sub-``, no leading zeros."""
    bare = subject_id.removeprefix(_BIDS_PREFIX)
    return (bare.lstrip("0") or "0") if bare.isdigit() else bare


def match_subject_ids(
    ids: pd.Series, subjects: Iterable[str], what: str, first_line: int | None = 2
) -> pd.Series:
    """``ids`` (a table's id column) with each id that is not a subject's replaced by the one
    subject it can only mean (``sub-`` added or dropped, leading zeros a spreadsheet dropped),
    logged; ids that match no subject stay as they are. An id that could mean several subjects
    is a :class:`SubjectTableError` naming its lines (``first_line``: the line of the row with
    index 0; None: ids only).
    """
    subjects = sorted(set(subjects))
    known = set(subjects)
    by_spoken: dict[str, list[str]] = {}
    for sid in subjects:
        by_spoken.setdefault(_spoken(sid), []).append(sid)
    out = ids.copy()
    matched, ambiguous = [], []
    for index, value in ids.items():  # the index: the row of read_subject_table's frame
        if not isinstance(value, str) or value in known:
            continue
        candidates = by_spoken.get(_spoken(value), [])
        if len(candidates) == 1:
            out.loc[index] = candidates[0]
            matched.append(f"{value} → {candidates[0]}")
        elif len(candidates) > 1:
            where = "" if first_line is None else f"line {index + first_line}: "
            ambiguous.append(f"{where}{value} ({' or '.join(candidates)})")
    if ambiguous:
        raise SubjectTableError(
            f"{what}: id(s) that could mean more than one subject: {'; '.join(ambiguous)}; "
            "write the subject ids as the folders are named"
        )
    if matched:
        more = f" and {len(matched) - 10} more" if len(matched) > 10 else ""
        log.info(
            "%s: %d id(s) matched to subjects by their digits or sub- prefix: %s%s",
            what, len(matched), ", ".join(matched[:10]), more,
        )  # fmt: skip
    return out
