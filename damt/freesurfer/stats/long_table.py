"""The long table of a subject's stats (one row per measure and per table cell), as Parquet with
the header facts in its metadata."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from damt.freesurfer.stats.model import StatsFile
from damt.freesurfer.stats.subject import SubjectStats

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
