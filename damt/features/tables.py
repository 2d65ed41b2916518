"""Wide feature tables on disk: Parquet, one row per subject, key ``subject_id``, with metadata.

The metadata (catalog or params version, source files, FreeSurfer versions, units, ...) is stored
as JSON under the ``damt`` key of the Parquet schema metadata, so it travels with the table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from damt.io import write_atomic
from damt.manifest import KEY

META_KEY = b"damt"


def cohort_frame(
    subject_ids: Iterable[str], rows: Mapping[str, Mapping[str, float]], columns: list[str]
) -> pd.DataFrame:
    """One float64 row per subject (sorted), NaN where a subject has no value."""
    ids = sorted(subject_ids)
    values = np.full((len(ids), len(columns)), np.nan)
    index = {c: j for j, c in enumerate(columns)}
    for i, sid in enumerate(ids):
        for col, val in rows.get(sid, {}).items():
            j = index.get(col)
            if j is not None and val is not None:
                values[i, j] = float(val)
    frame = pd.DataFrame(values, columns=columns)
    frame.insert(0, KEY, pd.array(ids, dtype="string"))
    return frame


def write_table(frame: pd.DataFrame, path: str | Path, metadata: Mapping) -> None:
    """Write ``frame`` (with a ``subject_id`` column) atomically, metadata in the schema."""
    if KEY not in frame.columns:
        raise ValueError(f"feature table for {path} has no '{KEY}' column")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode("utf-8")
    table = table.replace_schema_metadata(meta)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_metadata(path: str | Path) -> dict:
    """The ``damt`` metadata of a feature table."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(META_KEY, b"{}"))


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A feature table and its metadata."""
    frame = pq.read_table(path).to_pandas()
    frame[KEY] = frame[KEY].astype("string")
    return frame, read_metadata(path)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Every column but the key."""
    return [c for c in frame.columns if c != KEY]
