"""Issue codes and their severity: a code is ``fail`` (the subject cannot train), ``warn``
(trains; a missing feature group is masked out of its task) or ``ignore``. Discovery and cache
problems fail by default, everything else warns; ``qc.severity`` in the config overrides single
codes. A subject's status is the worst severity among its issues (``pass`` when none)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from damt.features import FEATURE_GROUPS
from damt.manifest import FAIL, PASS, WARN

IGNORE = "ignore"
_RANK = {PASS: 0, IGNORE: 0, WARN: 1, FAIL: 2}
FAIL_BY_DEFAULT = ("discovery:", "cache:")
# Codes outside the discovery and cache stages that fail by default.
DEFAULT_SEVERITY = {"qc:empty_atlas": FAIL}

# Every issue code a subject can get (documented in docs/contracts.md); ``qc.severity`` may name
# only these (and ``{stage}:error:{Exception}`` of an unexpected failure of a per-subject stage).
_VOLUME_REASONS = ("volume_unreadable", "grid_mismatch", "nonfinite_intensities")
KNOWN_CODES: tuple[str, ...] = tuple(
    sorted(
        [
            *(
                f"discovery:{r}"
                for r in (
                    "illegal_id",
                    "missing_required",
                    "broken_link",
                    "unreadable",
                    "duplicate_id",
                    "listed_not_found",
                    "recon_failed",
                    "recon_stale",
                )
            ),
            *(
                f"cache:{r}"
                for r in (
                    *_VOLUME_REASONS,
                    "empty_image",
                    "negative_labels",
                    "unreadable",
                    "not_run",
                )
            ),
            *(
                f"stats:{r}"
                for r in (
                    "stats_missing",
                    "stats_unreadable",
                    "stats_malformed",
                    "file_errors",
                    "nonfinite_values",
                    "unreadable",
                    "not_run",
                )
            ),
            *(
                f"radiomics:{r}"
                for r in (
                    *_VOLUME_REASONS,
                    "empty_roi",
                    "pyradiomics_error",
                    "all_rois_failed",
                    "roi_errors",
                    "unreadable",
                    "not_run",
                )
            ),
            *(
                f"qc:{r}"
                for r in (
                    "voxel_size",
                    "shape",
                    "intensity",
                    "missing_labels",
                    "unexpected_labels",
                    "empty_atlas",
                    "multiframe",
                    "surface_holes",
                    "etiv",
                    "etiv_missing",
                    "stats_subject_mismatch",
                    "outliers",
                    "mixed_segmenters",
                )
            ),
            *(f"features:{g}_missing" for g in FEATURE_GROUPS),
        ]
    )
)
_UNEXPECTED_ERROR = re.compile(r"(cache|stats|radiomics):error:[A-Za-z_][A-Za-z0-9_]*")


def check_severity(overrides: Mapping[str, str]) -> None:
    """Raise ``ValueError`` naming every unknown code of ``qc.severity`` and the known ones."""
    unknown = [
        c for c in overrides if c not in KNOWN_CODES and not _UNEXPECTED_ERROR.fullmatch(str(c))
    ]
    if unknown:
        raise ValueError(
            f"qc.severity names unknown issue code(s) {', '.join(map(repr, unknown))}; "
            f"known codes: {', '.join(KNOWN_CODES)} (and <stage>:error:<Exception> of an "
            "unexpected stage failure)"
        )


def severity_of(code: str, overrides: Mapping[str, str]) -> str:
    """Severity of an issue code: the config's override, else the default by stage."""
    if code in overrides:
        return overrides[code]
    if code in DEFAULT_SEVERITY:
        return DEFAULT_SEVERITY[code]
    return FAIL if code.startswith(FAIL_BY_DEFAULT) else WARN


def status_of(codes: Sequence[str], overrides: Mapping[str, str]) -> str:
    """Worst severity among issue codes (``pass`` when there is none)."""
    worst = PASS
    for code in codes:
        sev = severity_of(code, overrides)
        if _RANK[sev] > _RANK[worst]:
            worst = sev
    return worst
