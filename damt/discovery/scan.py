"""Subject discovery: which folders of the configured SUBJECTS_DIRs are subjects, and which are not.

This is the one place that decides the cohort: :func:`discover_subjects` classifies every folder
of the configured SUBJECTS_DIRs (a subject, or a report row saying why not).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from damt.discovery.ids import (
    BASE_TPS,
    DiscoveryError,
    is_valid_subject_id,
    participant_from_name,
    shard_of,
)
from damt.freesurfer.recon import (
    FAILED,
    FASTSURFER,
    FASTSURFER_BEFORE_ORIG_NU,
    RUNNING,
    STATUS_FILES,
    ReconStatus,
    recon_status,
)
from damt.io import HASH_CHARS
from damt.subject_tables import SubjectTableError, match_subject_ids

log = logging.getLogger(__name__)

# Files whose change means "this subject was reprocessed" beyond the required volumes.
RECON_MARKERS = (*STATUS_FILES, "stats")

INCLUDED, FLAGGED, SKIPPED = "included", "flagged", "skipped"
# Where fMRIPrep/sMRIPrep datasets keep their SUBJECTS_DIR, relative to the dataset.
BIDS_FREESURFER_DIRS = ("freesurfer", "sourcedata/freesurfer", "derivatives/freesurfer")


@dataclass(frozen=True)
class Subject:
    """A subject the workflow will process."""

    subject_id: str
    path: str
    source: str
    fingerprint: str
    shard: str
    segmenter: str = ""  # "freesurfer" or "fastsurfer" (damt.freesurfer.recon)
    segmenter_version: str = ""
    fs_version: str = ""  # from recon-all.done / build-stamp.txt ("" when they name none)
    recon_hours: str = ""  # wall time of the recon from its done file ("" when unknown)
    participant: str = ""  # the person: every split of subjects keeps one person on one side


@dataclass(frozen=True)
class Finding:
    """One row of the discovery report: a candidate folder and what discovery decided."""

    subject_id: str
    folder: str
    status: str  # included | flagged (QC failure) | skipped (by configuration)
    reason: str  # machine-readable code; empty for included subjects
    detail: str


@dataclass
class Discovery:
    """The outcome of a discovery run."""

    subjects: list[Subject]
    report: list[Finding]
    n_shards: int = 0
    notices: list[str] = field(default_factory=list)

    @property
    def subject_ids(self) -> list[str]:
        return [s.subject_id for s in self.subjects]

    def shards(self) -> dict[str, list[Subject]]:
        """Shard id → its subjects, both sorted."""
        out: dict[str, list[Subject]] = {}
        for s in self.subjects:
            out.setdefault(s.shard, []).append(s)
        return dict(sorted(out.items()))


def _template_timepoints(folder: Path) -> list[str] | None:
    """The timepoints a longitudinal template lists in ``base-tps``; None for other folders."""
    try:
        text = (folder / BASE_TPS).read_text(errors="replace")
    except OSError:
        return None
    return text.split()


def _fingerprint(folder: Path, required: Sequence[str], extra: Sequence[str] = ()) -> str:
    """Hash of size, mtime and ctime of the required files, the stages' input files (``extra``)
    and FreeSurfer's 'done' markers.

    The ctime catches a file replaced by a copy that keeps size and mtime (``cp -p``), so a
    subject whose inputs were fixed is recomputed. Any other ``OSError`` than a missing optional
    file (a symbolic-link loop, no permission) propagates: the caller flags the subject.
    """
    h = hashlib.sha1()
    seen: set[str] = set()
    for rel in (*required, *extra, *RECON_MARKERS):
        if rel in seen:
            continue
        seen.add(rel)
        try:
            st = os.stat(os.path.join(folder, rel))  # not pathlib: 60,000 subjects
        except FileNotFoundError:
            if rel in required:
                raise
            continue
        h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns};".encode())
    return h.hexdigest()[:HASH_CHARS]


def _printable(name: str) -> str:
    return name if name.isprintable() else repr(name)


@dataclass(frozen=True)
class _Search:
    """What makes a folder a subject (the arguments of :func:`discover_subjects`)."""

    required_files: Sequence[str]
    exclude: Sequence[str]
    listed: frozenset[str] | None  # the subjects list; None: every folder is a candidate
    n_shards: int
    input_files: Sequence[str]
    fastsurfer_required_files: Sequence[str] | None
    fastsurfer_input_files: Sequence[str]
    include_templates: bool
    stale_after_hours: float | None  # None: a running recon is never stale

    def excluded(self, name: str) -> bool:
        """A name matching ``subjects.exclude`` (a subjects list overrides the patterns)."""
        return self.listed is None and any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


def _classify(
    de: os.DirEntry, root: Path, search: _Search, found: Mapping[str, Subject]
) -> tuple[Subject | Finding | None, list[str] | None]:
    """What one entry of a subjects folder is: a subject, a report row, or None (no candidate:
    a file); and the timepoints it lists when it is a longitudinal template."""
    name, folder = de.name, root / de.name

    def skipped(reason: str, detail: str) -> Finding:
        return Finding(name, str(folder), SKIPPED, reason, detail)

    def flagged(reason: str, detail: str) -> Finding:
        return Finding(name, str(folder), FLAGGED, reason, detail)

    # fMRIPrep/sMRIPrep link fsaverage* to $FREESURFER_HOME; in a copied dataset the link is
    # broken, and an excluded template is no problem either way: the pattern goes first.
    if de.is_symlink() and search.excluded(name):
        return skipped("excluded_pattern", "matches subjects.exclude"), None
    if de.is_symlink() and not os.path.exists(folder):
        if search.listed is None or name in search.listed:
            return flagged("broken_link", f"{folder} is a broken symbolic link"), None
        return None, None
    if not de.is_dir():
        return None, None  # files (README, phenotypes.tsv, ...) are not candidates
    if search.listed is not None and name not in search.listed:
        return skipped("not_listed", "not in the subjects list"), None
    if not is_valid_subject_id(name):
        shown = _printable(name)
        detail = (
            f"folder name {shown!s} in {root} is not a valid subject id (allowed: letters, "
            "digits, '.', '_', '-'; not starting with '.'); rename the folder to include it"
        )
        return Finding(shown, str(folder), FLAGGED, "illegal_id", detail), None
    if search.excluded(name):
        return skipped("excluded_pattern", "matches subjects.exclude"), None
    if name in found:
        detail = (
            f"subject id {name} also found in {found[name].path}; "
            "the first configured folder wins, this copy is ignored"
        )
        return flagged("duplicate_id", detail), None
    tps = _template_timepoints(folder)
    if tps is not None and not search.include_templates and search.listed is None:
        detail = (
            f"longitudinal template of {', '.join(tps) or 'no timepoint'} "
            "(subjects.include_templates: false)"
        )
        return skipped("longitudinal_template", detail), tps
    return _recon_subject(name, folder, root, search), tps


def _running_recon(
    name: str, folder: Path, recon: ReconStatus, stale_after_hours: float | None
) -> Finding:
    """A running recon: skipped until it ends, or flagged once nothing in its ``scripts/``
    changed for ``stale_after_hours`` (a killed run leaves its marker behind)."""
    age_h = (time.time() - recon.last_change) / 3600
    if stale_after_hours is None or age_h <= stale_after_hours:
        return Finding(name, str(folder), SKIPPED, "recon_running", recon.detail)
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(recon.last_change))
    log.warning("%s: no change in scripts/ for %.1f hours, a stale run", name, age_h)
    # The age as a bound and a date, not a number that grows: the report (a QC input) then
    # stays the same from one discovery to the next.
    detail = (
        f"{recon.segmenter}: {recon.detail}, but nothing in scripts/ changed for over "
        f"{stale_after_hours:g} hours (subjects.stale_after_hours), since {since}: a killed "
        "run? Rerun the recon, or remove its IsRunning marker if it did finish"
    )
    return Finding(name, str(folder), FLAGGED, "recon_stale", detail)


def _recon_subject(name: str, folder: Path, root: Path, search: _Search) -> Subject | Finding:
    """A candidate folder by its recon: a subject when the recon is done and every required
    file is there, else the report row saying why not."""
    recon = recon_status(folder)
    if recon.state == RUNNING:
        return _running_recon(name, folder, recon, search.stale_after_hours)
    if recon.state == FAILED:
        detail = f"{recon.segmenter}: {recon.detail}"
        return Finding(name, str(folder), FLAGGED, "recon_failed", detail)
    required, inputs = search.required_files, search.input_files
    if recon.segmenter == FASTSURFER and search.fastsurfer_required_files is not None:
        required, inputs = search.fastsurfer_required_files, search.fastsurfer_input_files
    try:
        missing = [rel for rel in required if not (folder / rel).is_file()]
        fingerprint = None if missing else _fingerprint(folder, required, inputs)
    except OSError as exc:
        detail = (
            f"{exc.filename or folder} cannot be read: {exc.strerror or exc} "
            "(fix or remove it, then rerun)"
        )
        return Finding(name, str(folder), FLAGGED, "unreadable", detail)
    if missing:
        detail = f"{folder} lacks required file(s): {', '.join(missing)}"
        if recon.segmenter == FASTSURFER and recon.segmenter_version in FASTSURFER_BEFORE_ORIG_NU:
            detail += (
                f" (FastSurfer {recon.segmenter_version}, from scripts/deep-seg.log: releases "
                "before 2.1 write no mri/orig_nu.mgz; a surface run's bias-corrected image is "
                "mri/nu.mgz: name it in subjects.fastsurfer_required_files and the cache and "
                "radiomics fastsurfer.image settings, see docs/inputs.md)"
            )
        return Finding(name, str(folder), FLAGGED, "missing_required", detail)
    return Subject(
        name,
        str(folder),
        str(root),
        fingerprint,
        shard_of(name, search.n_shards),
        recon.segmenter,
        recon.segmenter_version,
        recon.fs_version,
        recon.recon_hours,
    )


def _entries(entry: Mapping, notices: list[str]) -> list[os.DirEntry] | None:
    """The entries of one configured subjects folder, sorted by name; None (with a notice) for a
    missing optional folder. A missing or unlistable folder otherwise is a DiscoveryError."""
    root = Path(entry["path"])
    if not root.is_dir():
        if entry["optional"]:
            notices.append(f"optional subjects folder {root} does not exist; skipped")
            return None
        raise DiscoveryError(
            f"subjects folder {root} does not exist (configured in subjects.dirs); "
            "create it, fix the path, or mark it `optional: true`"
        )
    try:
        return sorted(os.scandir(root), key=lambda e: e.name)
    except PermissionError as exc:
        raise DiscoveryError(f"subjects folder {root} cannot be listed: {exc.strerror}") from exc


def _record(report: list[Finding], finding: Finding) -> None:
    report.append(finding)
    if finding.status == FLAGGED:
        log.warning("subject folder %s: %s", _printable(finding.folder), finding.detail)


def _matched_participants(
    participants: Mapping[str, str], subjects: Mapping[str, Subject]
) -> dict[str, str]:
    """``participants`` with its ids matched to the subjects found (``sub-`` prefix, leading
    zeros a spreadsheet dropped: :func:`damt.subject_tables.match_subject_ids`)."""
    import pandas as pd

    try:
        ids = match_subject_ids(
            pd.Series(list(participants)), subjects, "subjects.participants", first_line=None
        )
    except SubjectTableError as exc:
        raise DiscoveryError(str(exc)) from exc
    return dict(zip(ids, participants.values(), strict=True))


def discover_subjects(
    dirs: Sequence[dict],
    *,
    required_files: Sequence[str],
    exclude: Sequence[str],
    n_shards: int,
    include_templates: bool,
    subjects_list: Iterable[str] | None = None,
    input_files: Sequence[str] = (),
    fastsurfer_required_files: Sequence[str] | None = None,
    fastsurfer_input_files: Sequence[str] = (),
    participants: Mapping[str, str] | None = None,
    stale_after_hours: float | None = None,
) -> Discovery:
    """Search ``dirs`` (``[{"path": ..., "optional": bool}]``) for subject folders.

    The settings are the ``subjects`` section's (and ``sharding.n_shards``;
    :func:`damt.discovery.workflow.discover_from_config` passes them): ``None`` or an empty
    sequence switches the optional ones off (FastSurfer subjects then need ``required_files``
    too, and a running recon never goes stale).

    A folder is a subject when its name is a legal id and it holds every ``required_files``
    entry. Everything else that looks like a candidate is written to the report with a reason:
    ``illegal_id``, ``missing_required``, ``broken_link``, ``unreadable``, ``duplicate_id``,
    ``listed_not_found``, ``recon_failed``, ``recon_stale`` (a running recon whose ``scripts/``
    did not change for ``stale_after_hours``; flagged: the QC manifest fails them),
    ``excluded_pattern``, ``not_listed`` and ``longitudinal_template`` (skipped by
    configuration) or ``recon_running`` (skipped until the run is over: a later discovery picks
    the subject up). ``input_files`` (relative paths the per-subject stages read besides the
    required files) enter the subject's fingerprint, so that a changed input reruns the
    subject's shard jobs.
    """
    listed = list(subjects_list) if subjects_list is not None else None
    search = _Search(
        required_files, exclude, None if listed is None else frozenset(listed), n_shards,
        input_files, fastsurfer_required_files, fastsurfer_input_files, include_templates,
        stale_after_hours,
    )  # fmt: skip
    subjects: dict[str, Subject] = {}
    report: list[Finding] = []
    notices: list[str] = []
    timepoints: dict[str, str] = {}  # cross-sectional timepoint → its longitudinal template
    for entry in dirs:
        entries = _entries(entry, notices)
        if entries is None:
            continue
        root, n_before = Path(entry["path"]), len(subjects)
        for de in entries:
            outcome, tps = _classify(de, root, search, subjects)
            if tps is not None:
                timepoints.update(dict.fromkeys(tps, de.name))
            if isinstance(outcome, Subject):
                subjects[outcome.subject_id] = outcome
                report.append(Finding(outcome.subject_id, outcome.path, INCLUDED, "", ""))
            elif outcome is not None:
                _record(report, outcome)
        nested = [root / rel for rel in BIDS_FREESURFER_DIRS if (root / rel).is_dir()]
        if nested and len(subjects) == n_before:
            notices.append(
                f"subjects folder {root} holds no subject but has "
                f"{', '.join(map(str, nested))}: an fMRIPrep/sMRIPrep dataset? put that folder "
                "in subjects.dirs"
            )
    found = {f.subject_id for f in report}
    for sid in [s for s in listed or () if s not in found]:
        detail = (
            f"subject {sid} is in the subjects list but no folder of that name exists "
            f"in {', '.join(str(d['path']) for d in dirs)}"
        )
        _record(report, Finding(sid, "", FLAGGED, "listed_not_found", detail))
    mapping = _matched_participants(participants, subjects) if participants else {}
    ordered = [
        replace(s, participant=mapping.get(k) or participant_from_name(k, timepoints))
        for k, s in sorted(subjects.items())
    ]
    report.sort(key=lambda f: (f.subject_id, f.folder))
    return Discovery(ordered, report, n_shards, notices)
