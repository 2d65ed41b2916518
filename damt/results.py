"""What the per-subject result store writes, for the stages that read it.

Each per-subject stage (:mod:`damt.stages`) stores a subject's result with a status, and each
shard job writes a summary table of its subjects (``SUMMARY_COLUMNS``). The cohort stages
(:mod:`damt.features`, :mod:`damt.qc`) read those summaries; this module is all they need of
the store, so they sit below the stages that write it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

OK, FAILED = "ok", "failed"
RESULT_FILE = "result.json"
SUMMARY_COLUMNS = ("subject_id", "status", "reason", "detail", "reused", "outputs", "info")


def read_summaries(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate shard summaries (one row per subject) written by
    :func:`damt.stages.store.run_shard`."""
    frames = [pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False) for p in paths]
    if not frames:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    out["reused"] = out["reused"].map({"True": True, "False": False})
    out["outputs"] = out["outputs"].map(json.loads)
    out["info"] = out["info"].map(json.loads)
    return out.sort_values("subject_id", ignore_index=True)
