"""Feature normalisation with explicit missing-value and constant-column handling.

:func:`fit_normalizer` learns per-column centre and scale on the subjects that pass QC (z-score:
mean and standard deviation; robust: median and IQR / 1.349, which equals the standard deviation
for Gaussian data). Columns that cannot be scaled are dropped and listed with the reason instead
of becoming NaN or 0: ``all_nan``, ``too_few_values`` (fewer than ``min_subjects`` values),
``constant`` (scale zero or negligible against the centre) and ``near_constant`` (one value held
by at least ``max_mode_fraction`` of the subjects). :meth:`Normalizer.apply` applies the saved
statistics to any table (new subjects, another site); missing values stay NaN, and so do ±inf
(a float parser turns the token ``inf`` into one): fitting and applying treat them as missing.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from damt.features.tables import feature_columns
from damt.io import write_json_atomic
from damt.manifest import KEY

log = logging.getLogger(__name__)
METHODS = ("zscore", "robust")
IQR_TO_SD = 1.349


def _values(frame: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """float64 matrix of ``cols`` with every non-finite value (NaN, ±inf, missing) as NaN."""
    values = frame.reindex(columns=cols).to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(values), values, np.nan)


class NormalizationError(ValueError):
    """Normalisation is impossible with the data given (e.g. a cohort of one subject)."""


@dataclass
class Normalizer:
    """Fitted per-column statistics."""

    method: str
    center: dict[str, float]
    scale: dict[str, float]
    dropped: dict[str, str] = field(default_factory=dict)
    clip: float | None = None
    n_fit: int = 0
    group: str = ""

    @property
    def columns(self) -> list[str]:
        return list(self.center)

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Normalised copy of ``frame``: kept columns only, float32, NaN preserved.

        A kept column absent from ``frame`` (e.g. another site's table) becomes all-NaN.
        """
        cols = self.columns
        values = _values(frame, cols)
        center = np.array([self.center[c] for c in cols])
        scale = np.array([self.scale[c] for c in cols])
        z = (values - center) / scale
        if self.clip is not None:
            z = np.clip(z, -self.clip, self.clip)
        out = pd.DataFrame(z.astype(np.float32), columns=cols, index=frame.index)
        out.insert(0, KEY, frame[KEY].to_numpy())
        return out.reset_index(drop=True)

    def to_json(self, path: str | Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def from_json(cls, path: str | Path) -> Normalizer:
        with open(path, encoding="utf-8") as fh:
            return cls(**json.load(fh))


def _drop_reason(
    col: np.ndarray,
    center: float,
    scale: float,
    min_subjects: int,
    max_mode_fraction: float,
    rel_tol: float,
) -> str | None:
    finite = col[np.isfinite(col)]
    if finite.size == 0:
        return "all_nan"
    if finite.size < min_subjects:
        return "too_few_values"
    if not math.isfinite(scale) or scale <= rel_tol * max(abs(center), 1e-12):
        return "constant"
    _, counts = np.unique(finite, return_counts=True)
    if counts.max() / finite.size >= max_mode_fraction:
        return "near_constant"
    return None


def fit_normalizer(
    frame: pd.DataFrame,
    fit_ids: list[str] | None = None,
    method: str = "zscore",
    clip: float | None = None,
    min_subjects: int = 2,
    max_mode_fraction: float = 0.95,
    rel_tol: float = 1e-9,
    group: str = "",
) -> Normalizer:
    """Fit the statistics on the rows of ``fit_ids`` (all rows when None).

    Raises :class:`NormalizationError` when fewer than ``min_subjects`` subjects are available:
    a standard deviation over one subject is undefined.
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalisation method {method!r}; use one of {METHODS}")
    if min_subjects < 2:
        raise ValueError("min_subjects must be at least 2")
    rows = frame if fit_ids is None else frame[frame[KEY].isin(set(fit_ids))]
    if len(rows) < min_subjects:
        raise NormalizationError(
            f"cannot normalise {group or 'the table'}: {len(rows)} subject(s) pass QC, at least "
            f"{min_subjects} are needed (a standard deviation needs two values)"
        )
    cols = feature_columns(frame)
    values = _values(rows, cols)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are handled below
        if method == "zscore":
            centers = np.nanmean(values, axis=0) if values.size else np.array([])
            scales = np.nanstd(values, axis=0, ddof=1) if values.size else np.array([])
        else:
            centers = np.nanmedian(values, axis=0) if values.size else np.array([])
            q75, q25 = (
                np.nanpercentile(values, [75, 25], axis=0)
                if values.size
                else (np.array([]), np.array([]))
            )
            scales = (q75 - q25) / IQR_TO_SD
    center, scale, dropped = {}, {}, {}
    for j, name in enumerate(cols):
        reason = _drop_reason(
            values[:, j],
            float(centers[j]),
            float(scales[j]),
            min_subjects,
            max_mode_fraction,
            rel_tol,
        )
        if reason:
            dropped[name] = reason
        else:
            center[name], scale[name] = float(centers[j]), float(scales[j])
    return Normalizer(method, center, scale, dropped, clip, len(rows), group)


def normalize_table(
    table_path: str | Path,
    fit_ids: list[str],
    out_table: str | Path,
    out_stats: str | Path,
    group: str,
    **options,
) -> Normalizer:
    """Fit on ``fit_ids``, write the normalised table (Parquet) and the statistics (JSON)."""
    from damt.features.tables import read_table, write_table

    frame, meta = read_table(table_path)
    norm = fit_normalizer(frame, fit_ids, group=group, **options)
    meta = {
        **meta,
        "normalization": {
            "method": norm.method,
            "clip": norm.clip,
            "n_fit": norm.n_fit,
            "dropped": norm.dropped,
            "source": str(table_path),
        },
    }
    write_table(norm.apply(frame), out_table, meta)
    norm.to_json(out_stats)
    return norm


def write_normalized(
    normalize: Mapping,
    group: str,
    table: str | Path,
    checks: str | Path,
    out_table: str | Path,
    out_stats: str | Path,
) -> Normalizer:
    """The ``normalize`` rule: fit one feature group on the subjects whose preliminary QC status
    (``qc/checks.parquet``) is in ``normalize.fit_on``; write the normalised table and statistics.

    ``normalize`` is the config's ``normalize`` section (the rule's params).
    """
    status = pd.read_parquet(checks, columns=[KEY, "status"])
    fit_ids = status.loc[status["status"].isin(normalize["fit_on"]), KEY].tolist()
    norm = normalize_table(
        table,
        fit_ids,
        out_table,
        out_stats,
        group,
        method=normalize["method"],
        clip=normalize["clip"],
        min_subjects=normalize["min_subjects"],
        max_mode_fraction=normalize["max_mode_fraction"],
    )
    log.info(
        "%s: fitted on %d subjects, %d columns kept, %d dropped %s",
        group,
        norm.n_fit,
        len(norm.columns),
        len(norm.dropped),
        sorted(set(norm.dropped.values())),
    )
    return norm
