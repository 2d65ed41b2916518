"""The phenotype table and one target's values, checked (bad rows warned about or refused)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from damt.manifest import KEY
from damt.probe.settings import CLASSIFICATION, REGRESSION, ProbeError, Target, listed
from damt.subject_tables import SubjectTableError, match_subject_ids, read_subject_table

log = logging.getLogger(__name__)


def read_phenotypes(path: str | Path, subjects: Sequence[str] | None = None) -> pd.DataFrame:
    """A phenotype table with a ``subject_id`` column, as spreadsheets write them
    (:func:`damt.subject_tables.read_subject_table`); rows without an id are dropped with a
    warning, and with ``subjects`` the ids are matched to them
    (:func:`damt.subject_tables.match_subject_ids`). Values stay as read (each target checks its
    own column)."""
    try:
        frame = read_subject_table(path)
    except SubjectTableError as exc:
        raise ProbeError(f"phenotype table: {exc}") from exc
    no_id = frame[KEY].isna() | (frame[KEY] == "")  # read_subject_table stripped the ids
    if no_id.any():
        log.warning(
            "phenotype table %s: %d row(s) without a subject_id (lines %s) are ignored",
            path,
            int(no_id.sum()),
            listed([i + 2 for i in np.flatnonzero(no_id)]),
        )
    frame = frame[~no_id].copy()
    if subjects is not None:
        try:
            frame[KEY] = match_subject_ids(frame[KEY], subjects, f"phenotype table {path}")
        except SubjectTableError as exc:
            raise ProbeError(str(exc)) from exc
    return frame


def target_values(phenotypes: pd.DataFrame, target: Target, subjects: Sequence[str]) -> pd.Series:
    """The target's value per probed subject (index: subject id), checked.

    Subjects listed more than once are left out (which row is right is unknowable), subjects
    without a row or value are left out, each with a warning naming them; a regression value
    that is not a number, or a classification target with one class, is a :class:`ProbeError`
    naming the target (and the subjects).
    """
    name = target.name
    if name not in phenotypes.columns:
        raise ProbeError(f"{name}: the phenotype table has no column {name!r}")
    rows = phenotypes[phenotypes[KEY].isin(set(subjects))]
    dup = rows[KEY][rows[KEY].duplicated(keep=False)].unique()
    if len(dup):
        log.warning(
            "%s: subject(s) listed more than once in the phenotype table are left out: %s",
            name,
            listed(sorted(dup)),
        )
        rows = rows[~rows[KEY].isin(set(dup))]
    values = rows.set_index(KEY)[name]
    if target.kind == REGRESSION:
        numeric = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & numeric.isna()
        if bad.any():
            raise ProbeError(
                f"{name}: a regression target, but non-numeric values for subject(s) "
                + listed([f"{s} ({v!r})" for s, v in values[bad].items()])
            )
        values = numeric
    else:
        values = values.dropna().astype(str)
    values = values.dropna()
    missing = sorted(set(subjects) - set(values.index) - set(dup))
    if missing:
        log.warning(
            "%s: no value for %d probed subject(s): %s", name, len(missing), listed(missing)
        )
    if target.kind == CLASSIFICATION and values.nunique() < 2:
        raise ProbeError(
            f"{name}: only one class ({listed(values.unique())}) among the "
            f"{len(values)} probed subjects with a value; nothing to classify"
        )
    return values.sort_index()
