"""The probe's vocabulary: target kinds, probes, protocols, metrics, settings and its error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

REGRESSION, CLASSIFICATION = "regression", "classification"
LINEAR, KNN = "linear", "knn"
METHODS = (LINEAR, KNN)
HOLDOUT_PROTOCOL, NESTED_CV = "holdout", "nested_cv"
METRICS = {REGRESSION: ("mae", "r2"), CLASSIFICATION: ("balanced_accuracy", "auc")}


class ProbeError(ValueError):
    """The probe cannot run on the data given (too few subjects, one class, ...)."""


@dataclass(frozen=True)
class Target:
    """A phenotype column to predict."""

    name: str
    kind: str  # regression | classification


@dataclass(frozen=True)
class ProbeSettings:
    """The probe's protocol settings (the config's ``probe`` section; defaults in the schema)."""

    min_holdout: int
    folds: int
    inner_folds: int
    label_fractions: tuple[float, ...]
    label_draws: int
    bootstrap: int
    seed: int

    @classmethod
    def from_config(cls, probe: Mapping) -> ProbeSettings:
        """From the config's ``probe`` section."""
        return cls(
            probe["min_holdout"],
            probe["folds"],
            probe["inner_folds"],
            tuple(sorted(float(f) for f in probe["label_fractions"])),
            probe["label_draws"],
            probe["bootstrap"],
            probe["seed"],
        )


def listed(ids: Sequence, limit: int = 10) -> str:
    """The first ``limit`` of ``ids`` for a log line, and how many more there are."""
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(map(str, ids[:limit])) + more
