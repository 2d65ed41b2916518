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


def trains(manifest: pd.DataFrame) -> pd.Series:
    """Which manifest rows pretrain: status pass or warn, a training cache, and not held out for
    evaluation (``split``; a manifest without the column holds nobody out)."""
    usable = manifest["status"].isin(TRAINING_STATUSES) & manifest["has_cache"].fillna(
        False
    ).astype(bool)
    if "split" in manifest.columns:
        usable &= manifest["split"] != HOLDOUT
    return usable
