"""The manifest's vocabulary: its key, its subject statuses, its split, and who trains.

The QC stage writes the manifest (:mod:`damt.qc`); the split (:mod:`damt.split`), the trainer
and the probe read it. The words they share live here, below all of them.
"""

from __future__ import annotations

import pandas as pd

KEY = "subject_id"
PASS, WARN, FAIL = "pass", "warn", "fail"
TRAINING_STATUSES = (PASS, WARN)
# The `split` column: pretraining subjects and held-out ones (damt.split decides).
TRAIN, HOLDOUT = "train", "holdout"


def _usable(manifest: pd.DataFrame) -> pd.Series:
    """Rows of status pass or warn with a training cache."""
    has_cache = manifest["has_cache"].fillna(False).astype(bool)
    return manifest["status"].isin(TRAINING_STATUSES) & has_cache


def trains(manifest: pd.DataFrame) -> pd.Series:
    """Which manifest rows pretrain: status pass or warn, a training cache, and not held out for
    evaluation (``split``; a manifest without the column holds nobody out)."""
    usable = _usable(manifest)
    if "split" in manifest.columns:
        usable &= manifest["split"] != HOLDOUT
    return usable


def held_out(manifest: pd.DataFrame) -> pd.Series:
    """Which manifest rows are held out for evaluation and could pretrain otherwise (status pass
    or warn, a training cache): the subjects whose views score the held-out learning signals."""
    if "split" not in manifest.columns:
        return pd.Series(False, index=manifest.index)
    return _usable(manifest) & (manifest["split"] == HOLDOUT)
