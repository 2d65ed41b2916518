"""Morphometry feature tables: feature catalog, long → wide rows, cohort tables with metadata.

The catalog (YAML, ``morphometry.catalog`` in the workflow config) says which stats files, rows
and measures form the ``global`` and ``local`` groups. Each group becomes one wide Parquet table:
one row per discovered subject, key ``subject_id``, float64 columns named the way FreeSurfer's
``asegstats2table`` / ``aparcstats2table`` name them, NaN where a value is missing, and a
machine-readable reason per subject in the metadata (for the QC manifest).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from damt import __version__
from damt.discovery.record import read_discovery_subject_ids
from damt.features.tables import write_table
from damt.freesurfer.harmonize import (
    HEMISPHERES,
    KINDS,
    MEASURE_KEYS,
    STRUCTURE_SETS,
    SURFACE_KINDS,
    classify_stats_file,
    measure_column_name,
    stats_file_name,
    table_column_name,
)
from damt.io import stable_hash
from damt.results import OK, read_summaries

log = logging.getLogger(__name__)

GROUPS = ("global", "local")
CATALOG_SCHEMA = Path(str(files("damt") / "resources" / "morphometry_catalog.schema.yaml"))

# Reasons a subject's value is missing (per table, in the metadata, for the QC manifest).
NO_RESULT = "no_result"  # the stats stage has no result for the subject
FILE_MISSING = "file_missing"  # the subject has no stats file of that kind
FILE_ERROR = "file_error"  # the file exists but could not be read or parsed
VALUE_MISSING = "value_missing"  # the file lacks that row or measure (e.g. older FreeSurfer)
VALUE_NONFINITE = "value_nonfinite"  # the file holds nan/inf for it (kept as missing)


class CatalogError(ValueError):
    """A feature catalog is invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class Feature:
    """One column of a morphometry table and where its value comes from."""

    column: str
    sources: tuple[str, ...]  # stats file kinds, tried in order
    hemisphere: str  # "lh", "rh" or ""
    structure: str  # canonical structure, or the key of a '# Measure' line
    measure: str  # '# ColHeaders' name, or the name of a '# Measure' line

    def source_files(self) -> list[str]:
        """FreeSurfer 7 names of the files the value may come from."""
        return [stats_file_name(k, self.hemisphere) for k in self.sources]


@dataclass(frozen=True)
class Catalog:
    """A validated, expanded feature catalog."""

    version: str
    path: str
    groups: dict[str, tuple[Feature, ...]]
    descriptions: dict[str, str]

    @property
    def digest(self) -> str:
        """Hash of the expanded features (changes whenever a column or its source changes)."""
        return stable_hash(
            {"version": self.version, "groups": {g: list(f) for g, f in self.groups.items()}}
        )


def _where(error: jsonschema.ValidationError) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path]
    return "".join(parts).lstrip(".") or "<top level>"


def _entry_features(entry: dict, where: str) -> list[Feature]:
    sources = entry["source"]
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    unknown = [s for s in sources if s not in KINDS]
    if unknown:
        raise CatalogError(
            f"{where}.source: unknown stats file kind {unknown[0]!r}; known: {KINDS}"
        )
    surface = {s in SURFACE_KINDS for s in sources}
    if len(surface) > 1:
        raise CatalogError(f"{where}.source: mixes ?h.* and whole-brain files")
    if surface == {True}:
        hemis = tuple(entry.get("hemispheres", HEMISPHERES))
    elif "hemispheres" in entry:
        raise CatalogError(f"{where}.hemispheres: {sources[0]} is a whole-brain file")
    else:
        hemis = ("",)
    prefix = entry.get("prefix", "")
    out: list[Feature] = []
    if "measures" in entry:
        for name in entry["measures"]:
            if name not in MEASURE_KEYS:
                raise CatalogError(
                    f"{where}.measures: {name!r} is not a '# Measure' name FreeSurfer writes; "
                    f"known: {', '.join(MEASURE_KEYS)}"
                )
            for h in hemis:
                col = prefix + measure_column_name(h, MEASURE_KEYS[name], name)
                out.append(Feature(col, sources, h, MEASURE_KEYS[name], name))
        return out
    structures = entry["structures"]
    if isinstance(structures, str):
        if structures not in STRUCTURE_SETS:
            raise CatalogError(
                f"{where}.structures: unknown set {structures!r}; "
                f"known: {', '.join(STRUCTURE_SETS)} (or give a list)"
            )
        structures = STRUCTURE_SETS[structures]
    for h in hemis:
        for s in structures:
            for c in entry["columns"]:
                col = prefix + table_column_name(sources[0], h, s, c)
                out.append(Feature(col, sources, h, s, c))
    return out


def parse_catalog(data: object, path: str = "<catalog>") -> Catalog:
    """Validate a catalog (the parsed YAML) and expand it into features per group.

    Raises :class:`CatalogError` naming the file and entry: schema violations, unknown file
    kinds, measure names or structure sets, and two features with the same column name.
    """
    schema = yaml.safe_load(CATALOG_SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: e.json_path
    )
    if errors:
        lines = "\n".join(f"  {_where(e)}: {e.message}" for e in errors)
        raise CatalogError(f"invalid feature catalog {path}:\n{lines}")
    assert isinstance(data, dict)
    groups: dict[str, tuple[Feature, ...]] = {}
    for group in GROUPS:
        features: list[Feature] = []
        first: dict[str, str] = {}
        for i, entry in enumerate(data["groups"][group]["features"]):
            where = f"groups.{group}.features[{i}]"
            try:
                new = _entry_features(entry, where)
            except CatalogError as exc:
                raise CatalogError(f"invalid feature catalog {path}: {exc}") from None
            for f in new:
                if f.column in first:
                    raise CatalogError(
                        f"invalid feature catalog {path}: {where} makes column {f.column!r}, "
                        f"which {first[f.column]} makes too; give one of them a `prefix`"
                    )
                first[f.column] = where
            features.extend(new)
        groups[group] = tuple(features)
    descriptions = {g: data["groups"][g].get("description", "").strip() for g in GROUPS}
    return Catalog(str(data["version"]), path, groups, descriptions)


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read feature catalog {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"feature catalog {path} is not valid YAML: {exc}") from exc
    return parse_catalog(data, str(path))


# --- one subject: long → wide ----------------------------------------------------------------


@dataclass
class WideRow:
    """One subject's values for one group, and why some are missing."""

    values: np.ndarray  # float64, NaN where missing
    units: list[str]  # unit of each value ("" where missing)
    sources: list[str]  # actual file each value came from ("" where missing)
    missing: dict[str, list[str]] = field(default_factory=dict)  # reason → columns

    @property
    def reasons(self) -> list[str]:
        return sorted(self.missing)


def wide_row(
    long: Mapping[str, Sequence] | None,
    features: Sequence[Feature],
    file_errors: Mapping[str, str] | None = None,
) -> WideRow:
    """Pick a subject's catalog values out of its long table (columns as sequences).

    ``file_errors`` (``{file name: message}``) tells a malformed file (``file_error``) from an
    absent one (``file_missing``).
    """
    n = len(features)
    values = np.full(n, np.nan)
    units = [""] * n
    sources = [""] * n
    missing: dict[str, list[str]] = {}
    long = long or {"source_file": [], "structure": [], "measure": [], "value": [], "unit": []}
    slots: dict[tuple[str, str], str] = {}
    for name in set(long["source_file"]):
        fk = classify_stats_file(name)
        if fk is not None:
            slots[(fk.kind, fk.hemisphere)] = name
    broken: set[tuple[str, str]] = set()
    for name in file_errors or {}:
        fk = classify_stats_file(name)
        if fk is not None:
            broken.add((fk.kind, fk.hemisphere))
    index = {
        key: i
        for i, key in enumerate(
            zip(long["source_file"], long["structure"], long["measure"], strict=True)
        )
    }
    value_col, unit_col = long["value"], long["unit"]
    for j, f in enumerate(features):
        reason = FILE_MISSING
        for kind in f.sources:
            name = slots.get((kind, f.hemisphere))
            if name is None:
                if (kind, f.hemisphere) in broken and reason == FILE_MISSING:
                    reason = FILE_ERROR
                continue
            i = index.get((name, f.structure, f.measure))
            if i is None:
                reason = VALUE_MISSING
                continue
            value = value_col[i]
            if value is None or not np.isfinite(value):
                reason = VALUE_NONFINITE
                continue
            values[j] = value
            units[j] = unit_col[i]
            sources[j] = name
            break
        else:
            missing.setdefault(reason, []).append(f.column)
    return WideRow(values, units, sources, missing)


# --- the cohort ------------------------------------------------------------------------------


@dataclass
class SubjectInput:
    """What the tables need of one subject's stats result."""

    subject_id: str
    status: str  # ok | failed | "" (no result)
    reason: str = ""
    detail: str = ""
    long: Mapping[str, Sequence] | None = None
    file_errors: dict[str, str] = field(default_factory=dict)
    fs_version: str = ""
    segmenter: str = ""
    segmenter_version: str = ""


def _slots(features: Iterable[Feature]) -> set[tuple[str, str]]:
    return {(kind, f.hemisphere) for f in features for kind in f.sources}


def _subject_status(
    row: WideRow, subject: SubjectInput, slots: set[tuple[str, str]], n: int
) -> dict:
    if subject.status != OK:
        reasons = [subject.reason or NO_RESULT]
        detail = subject.detail or "the stats stage has no result for this subject"
    else:
        reasons = row.reasons
        parts = [
            f"{reason}: {len(cols)} column(s), e.g. {', '.join(cols[:3])}"
            for reason, cols in sorted(row.missing.items())
        ]
        for name, msg in sorted(subject.file_errors.items()):
            fk = classify_stats_file(name)
            if fk is not None and (fk.kind, fk.hemisphere) in slots:
                parts.append(msg)
        detail = "; ".join(parts)
    n_missing = int(np.isnan(row.values).sum())
    status = "complete" if n_missing == 0 else "missing" if n_missing == n else "partial"
    return {
        "status": status,
        "reasons": reasons,
        "detail": detail,
        "n_missing": n_missing,
        "fs_version": subject.fs_version,
        "segmenter": subject.segmenter,
        "segmenter_version": subject.segmenter_version,
        "source_files": sorted({s for s in row.sources if s}),
    }


def cohort_table(
    subjects: Iterable[SubjectInput], catalog: Catalog, group: str
) -> tuple[pd.DataFrame, dict]:
    """The wide table of one group (rows sorted by subject id) and its ``damt`` metadata."""
    features = catalog.groups[group]
    columns = [f.column for f in features]
    ids: list[str] = []
    rows: list[np.ndarray] = []
    per_subject: dict[str, dict] = {}
    unit_votes: list[Counter] = [Counter() for _ in features]
    slots = _slots(features)
    for subject in sorted(subjects, key=lambda s: s.subject_id):
        long = subject.long if subject.status == OK else None
        row = wide_row(long, features, subject.file_errors)
        for votes, unit in zip(unit_votes, row.units, strict=True):
            if unit:
                votes[unit] += 1
        ids.append(subject.subject_id)
        rows.append(row.values)
        per_subject[subject.subject_id] = _subject_status(row, subject, slots, len(features))
    data = np.vstack(rows) if rows else np.empty((0, len(features)))
    frame = pd.DataFrame(data, columns=columns, dtype="float64")
    frame.insert(0, "subject_id", pd.array(ids, dtype="string"))
    units = {
        c: (v.most_common(1)[0][0] if v else "") for c, v in zip(columns, unit_votes, strict=True)
    }
    mixed = {c: sorted(v) for c, v in zip(columns, unit_votes, strict=True) if len(v) > 1}
    if mixed:
        log.warning("%s: columns with more than one unit across subjects: %s", group, mixed)
    meta = {
        "table": f"morphometry_{group}",
        "group": group,
        "description": catalog.descriptions[group],
        "catalog": {"version": catalog.version, "path": catalog.path, "digest": catalog.digest},
        "damt_version": __version__,
        "n_subjects": len(ids),
        "n_columns": len(columns),
        "source_files": sorted({s for f in features for s in f.source_files()}),
        "columns": {
            f.column: {
                "source_files": f.source_files(),
                "structure": f.structure,
                "measure": f.measure,
                "unit": units[f.column],
            }
            for f in features
        },
        "units": units,
        "mixed_units": mixed,
        "subjects": per_subject,
    }
    return frame, meta


def _needed_files(info_files: Iterable[str], catalog: Catalog) -> list[str]:
    slots = _slots(f for feats in catalog.groups.values() for f in feats)
    out = []
    for name in info_files:
        fk = classify_stats_file(name)
        if fk is not None and (fk.kind, fk.hemisphere) in slots:
            out.append(name)
    return out


def load_subject_input(
    subject_id: str, summary_row: Mapping | None, catalog: Catalog
) -> SubjectInput:
    """Gather one subject's stats result (summary row, ``result.json``, long table)."""
    if summary_row is None:
        return SubjectInput(subject_id, "")
    status, reason, detail = summary_row["status"], summary_row["reason"], summary_row["detail"]
    if status != OK:
        return SubjectInput(subject_id, status, reason, detail)
    info = summary_row["info"]
    path = summary_row["outputs"].get("long")
    long = None
    if path:
        needed = _needed_files(info.get("files", []), catalog)
        table = pq.read_table(
            path, columns=["source_file", "structure", "measure", "value", "unit"]
        )
        table = table.filter(pc.is_in(table["source_file"], pa.array(needed, pa.string())))
        long = table.to_pydict()
    return SubjectInput(
        subject_id,
        status,
        reason,
        detail,
        long,
        dict(info.get("file_errors", {})),
        info.get("fs_version", ""),
        info.get("segmenter", ""),
        info.get("segmenter_version", ""),
    )


def build_morphometry_tables(
    summaries: Sequence[str | Path],
    subjects_file: str | Path,
    catalog_file: str | Path,
    outputs: Mapping[str, str | Path],
) -> dict[str, pd.DataFrame]:
    """The ``morphometry_tables`` rule: one table per group in ``outputs`` (group → path).

    Rows are the subjects of ``subjects_file`` (discovery's ``subjects.tsv``); subjects whose
    stats failed keep an all-NaN row and their reason in the metadata.
    """
    catalog = load_catalog(catalog_file)
    summary = read_summaries(summaries)
    by_id = {row["subject_id"]: row for row in summary.to_dict("records")}
    inputs = [
        load_subject_input(sid, by_id.get(sid), catalog)
        for sid in read_discovery_subject_ids(subjects_file)
    ]
    tables = {}
    for group, path in outputs.items():
        frame, meta = cohort_table(inputs, catalog, group)
        write_table(frame, path, meta)
        statuses = Counter(s["status"] for s in meta["subjects"].values())
        log.info(
            "%s: %d subjects × %d columns (%s) → %s",
            group,
            len(frame),
            meta["n_columns"],
            ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
            path,
        )
        tables[group] = frame
    return tables
