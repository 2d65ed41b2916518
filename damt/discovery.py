"""Subject discovery: which folders of the configured SUBJECTS_DIRs are subjects, and which are not.

This is the one place that decides the cohort. The Snakefile calls :func:`discover_for_workflow`
at parse time; the files it writes (``discovery/subjects.tsv``, ``discovery/report.tsv`` and one
membership file per shard) are inputs of the rules, rewritten only when their content changes, so
that Snakemake reruns exactly the jobs whose subjects changed.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import logging
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from damt.freesurfer.recon import FAILED, FASTSURFER, RUNNING, STATUS_FILES, recon_status
from damt.io import HASH_CHARS, write_text_if_changed
from damt.paths import ResultPaths

log = logging.getLogger(__name__)

SUBJECT_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# Files whose change means "this subject was reprocessed" beyond the required volumes.
RECON_MARKERS = (*STATUS_FILES, "stats")

INCLUDED, FLAGGED, SKIPPED = "included", "flagged", "skipped"
# FreeSurfer's longitudinal stream: timepoints "<tp>.long.<template>"; the template folder
# ("base") lists its cross-sectional timepoints in "base-tps".
LONG_RE = re.compile(r"(?P<tp>.+)\.long\.(?P<base>.+)")
BASE_TPS = "base-tps"
# BIDS subject and session labels as fMRIPrep/sMRIPrep name FreeSurfer folders.
BIDS_SESSION_RE = re.compile(r"(?P<sub>sub-[A-Za-z0-9]+)_ses-[A-Za-z0-9]+")
# Where fMRIPrep/sMRIPrep datasets keep their SUBJECTS_DIR, relative to the dataset.
BIDS_FREESURFER_DIRS = ("freesurfer", "sourcedata/freesurfer", "derivatives/freesurfer")


class DiscoveryError(RuntimeError):
    """The configuration points at something that cannot be searched (e.g. a missing folder)."""


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


def is_valid_subject_id(name: str) -> bool:
    """True for ids made of ``[A-Za-z0-9._-]`` that do not start with a dot."""
    return SUBJECT_ID_RE.fullmatch(name) is not None


def shard_of(subject_id: str, n_shards: int) -> str:
    """Stable shard id of a subject: the id itself when unsharded, else a crc32 bucket."""
    if n_shards <= 0:
        return subject_id
    width = len(str(n_shards - 1))
    return f"shard{zlib.crc32(subject_id.encode('utf-8')) % n_shards:0{width}d}"


def participant_from_name(subject_id: str, timepoints: dict[str, str] | None = None) -> str:
    """Participant id told by a folder name: the template of a longitudinal timepoint
    (``tp1.long.base`` → ``base``) or of a cross-sectional run it lists (``timepoints``:
    timepoint → template), the subject of a BIDS session (``sub-01_ses-02`` → ``sub-01``),
    else the id itself."""
    match = LONG_RE.fullmatch(subject_id)
    if match:
        return match.group("base")
    if timepoints and subject_id in timepoints:
        return timepoints[subject_id]
    match = BIDS_SESSION_RE.fullmatch(subject_id)
    return match.group("sub") if match else subject_id


def read_participants(path: str | Path) -> dict[str, str]:
    """A mapping file (TSV/CSV with ``subject_id`` and ``participant`` columns)."""
    with open(path, encoding="utf-8", newline="") as fh:
        delimiter = "," if str(path).endswith(".csv") else "\t"
        reader = csv.DictReader(fh, delimiter=delimiter)
        if not {"subject_id", "participant"} <= set(reader.fieldnames or ()):
            raise DiscoveryError(
                f"participants file {path} needs the columns subject_id and participant "
                f"(found: {', '.join(reader.fieldnames or ()) or 'none'})"
            )
        return {
            row["subject_id"].strip(): row["participant"].strip()
            for row in reader
            if row["subject_id"].strip() and row["participant"].strip()
        }


def _template_timepoints(folder: Path) -> list[str] | None:
    """The timepoints a longitudinal template lists in ``base-tps``; None for other folders."""
    try:
        text = (folder / BASE_TPS).read_text(errors="replace")
    except OSError:
        return None
    return text.split()


def read_subjects_list(path: str | Path) -> list[str]:
    """Read a subjects list: one id per line, blank lines and ``#`` comments ignored."""
    ids: list[str] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            sid = line.split("#", 1)[0].strip()
            if sid and sid not in seen:
                seen.add(sid)
                ids.append(sid)
    return ids


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


def discover_subjects(
    dirs: Sequence[dict],
    required_files: Sequence[str] = ("mri/brainmask.mgz", "mri/aparc+aseg.mgz"),
    exclude: Sequence[str] = ("fsaverage*",),
    subjects_list: Iterable[str] | None = None,
    n_shards: int = 0,
    input_files: Sequence[str] = (),
    fastsurfer_required_files: Sequence[str] | None = None,
    fastsurfer_input_files: Sequence[str] = (),
    include_templates: bool = False,
    participants: Mapping[str, str] | None = None,
) -> Discovery:
    """Search ``dirs`` (``[{"path": ..., "optional": bool}]``) for subject folders.

    A folder is a subject when its name is a legal id and it holds every ``required_files``
    entry. Everything else that looks like a candidate is written to the report with a reason:
    ``illegal_id``, ``missing_required``, ``broken_link``, ``unreadable``, ``duplicate_id``,
    ``listed_not_found``, ``recon_failed`` (flagged: the QC manifest fails them),
    ``excluded_pattern`` and ``not_listed`` (skipped by configuration) or ``recon_running``
    (skipped until the run is over: a later discovery picks the subject up). ``input_files``
    (relative paths the per-subject stages read besides the required files) enter the
    subject's fingerprint, so that a changed input reruns the subject's shard jobs.
    """
    listed = list(subjects_list) if subjects_list is not None else None
    listed_set = set(listed) if listed is not None else None
    subjects: dict[str, Subject] = {}
    report: list[Finding] = []
    notices: list[str] = []
    timepoints: dict[str, str] = {}  # cross-sectional timepoint → its longitudinal template

    def flag(sid: str, folder: Path | str, reason: str, detail: str, status: str = FLAGGED):
        report.append(Finding(sid, str(folder), status, reason, detail))
        if status == FLAGGED:
            log.warning("subject folder %s: %s", _printable(str(folder)), detail)

    for entry in dirs:
        root = Path(entry["path"])
        if not root.is_dir():
            if entry.get("optional", False):
                notices.append(f"optional subjects folder {root} does not exist; skipped")
                continue
            raise DiscoveryError(
                f"subjects folder {root} does not exist (configured in subjects.dirs); "
                "create it, fix the path, or mark it `optional: true`"
            )
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except PermissionError as exc:
            raise DiscoveryError(
                f"subjects folder {root} cannot be listed: {exc.strerror}"
            ) from exc

        n_before = len(subjects)
        for de in entries:
            name = de.name
            folder = root / name
            if (
                listed_set is None
                and de.is_symlink()
                and any(fnmatch.fnmatchcase(name, p) for p in exclude)
            ):
                # fMRIPrep/sMRIPrep link fsaverage* to $FREESURFER_HOME; in a copied dataset the
                # link is broken, and an excluded template is no problem either way.
                report.append(
                    Finding(
                        name, str(folder), SKIPPED, "excluded_pattern", "matches subjects.exclude"
                    )
                )
                continue
            if de.is_symlink() and not os.path.exists(folder):
                if listed_set is None or name in listed_set:
                    flag(name, folder, "broken_link", f"{folder} is a broken symbolic link")
                continue
            if not de.is_dir():
                continue  # files (README, phenotypes.tsv, ...) are not candidates
            if listed_set is not None and name not in listed_set:
                report.append(
                    Finding(name, str(folder), SKIPPED, "not_listed", "not in the subjects list")
                )
                continue
            if not is_valid_subject_id(name):
                flag(
                    _printable(name),
                    folder,
                    "illegal_id",
                    f"folder name {_printable(name)!s} in {root} is not a valid subject id "
                    "(allowed: letters, digits, '.', '_', '-'; not starting with '.'); "
                    "rename the folder to include it",
                )
                continue
            if listed_set is None and any(fnmatch.fnmatchcase(name, p) for p in exclude):
                report.append(
                    Finding(
                        name, str(folder), SKIPPED, "excluded_pattern", "matches subjects.exclude"
                    )
                )
                continue
            if name in subjects:
                flag(
                    name,
                    folder,
                    "duplicate_id",
                    f"subject id {name} also found in {subjects[name].path}; "
                    "the first configured folder wins, this copy is ignored",
                )
                continue
            tps = _template_timepoints(folder)
            if tps is not None:
                timepoints.update(dict.fromkeys(tps, name))
                if not include_templates and listed_set is None:
                    report.append(
                        Finding(
                            name,
                            str(folder),
                            SKIPPED,
                            "longitudinal_template",
                            f"longitudinal template of {', '.join(tps) or 'no timepoint'} "
                            "(subjects.include_templates: false)",
                        )
                    )
                    continue
            recon = recon_status(folder)
            if recon.state == RUNNING:
                report.append(Finding(name, str(folder), SKIPPED, "recon_running", recon.detail))
                continue
            if recon.state == FAILED:
                flag(name, folder, "recon_failed", f"{recon.segmenter}: {recon.detail}")
                continue
            required, inputs = required_files, input_files
            if recon.segmenter == FASTSURFER and fastsurfer_required_files is not None:
                required, inputs = fastsurfer_required_files, fastsurfer_input_files
            try:
                missing = [rel for rel in required if not (folder / rel).is_file()]
                fingerprint = None if missing else _fingerprint(folder, required, inputs)
            except OSError as exc:
                where = exc.filename or folder
                flag(
                    name,
                    folder,
                    "unreadable",
                    f"{where} cannot be read: {exc.strerror or exc} (fix or remove it, then rerun)",
                )
                continue
            if missing:
                flag(
                    name,
                    folder,
                    "missing_required",
                    f"{folder} lacks required file(s): {', '.join(missing)}",
                )
                continue
            subjects[name] = Subject(
                name,
                str(folder),
                str(root),
                fingerprint,
                shard_of(name, n_shards),
                recon.segmenter,
                recon.segmenter_version,
                recon.fs_version,
                recon.recon_hours,
            )
            report.append(Finding(name, str(folder), INCLUDED, "", ""))
        nested = [root / rel for rel in BIDS_FREESURFER_DIRS if (root / rel).is_dir()]
        if nested and len(subjects) == n_before:
            notices.append(
                f"subjects folder {root} holds no subject but has "
                f"{', '.join(map(str, nested))}: an fMRIPrep/sMRIPrep dataset? put that folder "
                "in subjects.dirs"
            )

    if listed is not None:
        found = {f.subject_id for f in report}
        for sid in listed:
            if sid not in found:
                flag(
                    sid,
                    "",
                    "listed_not_found",
                    f"subject {sid} is in the subjects list but no folder of that name exists "
                    f"in {', '.join(str(d['path']) for d in dirs)}",
                )

    mapping = participants or {}
    ordered = [
        replace(s, participant=mapping.get(k) or participant_from_name(k, timepoints))
        for k, s in sorted(subjects.items())
    ]
    report.sort(key=lambda f: (f.subject_id, f.folder))
    return Discovery(ordered, report, n_shards, notices)


# --- files exchanged with the workflow ---------------------------------------------------------

SUBJECT_COLUMNS = (
    "subject_id",
    "path",
    "source",
    "fingerprint",
    "shard",
    "segmenter",
    "segmenter_version",
    "fs_version",
    "recon_hours",
    "participant",
)
REPORT_COLUMNS = ("subject_id", "folder", "status", "reason", "detail")
MEMBER_COLUMNS = ("subject_id", "path", "fingerprint")


def _tsv(rows: Iterable[Sequence[str]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def write_discovery(discovery: Discovery, outdir: str | Path) -> list[Path]:
    """Write the discovery files, touching only those whose content changed; drop stale shards.

    Returns the paths that were (re)written.
    """
    paths = ResultPaths(str(outdir))
    written: list[Path] = []
    subj_rows = [[getattr(s, c) for c in SUBJECT_COLUMNS] for s in discovery.subjects]
    subjects = Path(paths.discovery_subjects())
    if write_text_if_changed(subjects, _tsv(subj_rows, SUBJECT_COLUMNS)):
        written.append(subjects)
    rep_rows = [[getattr(f, c) for c in REPORT_COLUMNS] for f in discovery.report]
    report = Path(paths.discovery_report())
    if write_text_if_changed(report, _tsv(rep_rows, REPORT_COLUMNS)):
        written.append(report)

    shards = discovery.shards()
    for shard, members in shards.items():
        rows = [[s.subject_id, s.path, s.fingerprint] for s in members]
        target = Path(paths.shard_members(shard))
        if write_text_if_changed(target, _tsv(rows, MEMBER_COLUMNS)):
            written.append(target)
    shards_dir = Path(paths.shards_dir())
    if shards_dir.is_dir():
        for stale in shards_dir.glob("*.tsv"):
            if stale.stem not in shards:
                stale.unlink()
    return written


def read_discovery(outdir: str | Path) -> Discovery:
    """Load the discovery files written by :func:`write_discovery`."""
    paths = ResultPaths(str(outdir))
    subjects = [Subject(**row) for row in _read_tsv(Path(paths.discovery_subjects()))]
    report = [Finding(**row) for row in _read_tsv(Path(paths.discovery_report()))]
    shard_ids = {s.shard for s in subjects}
    n_shards = 0 if all(s.shard == s.subject_id for s in subjects) else len(shard_ids)
    return Discovery(subjects, report, n_shards)


def read_shard(path: str | Path) -> list[dict[str, str]]:
    """Rows (subject_id, path, fingerprint) of one shard membership file."""
    return _read_tsv(Path(path))


def discover_from_config(config: dict) -> Discovery:
    """Run :func:`discover_subjects` with the settings of a validated configuration."""
    sub = config["subjects"]
    listed = read_subjects_list(sub["list"]) if sub.get("list") else None
    return discover_subjects(
        sub["dirs"],
        required_files=sub["required_files"],
        exclude=sub["exclude"],
        subjects_list=listed,
        n_shards=config["sharding"]["n_shards"],
        input_files=stage_input_files(config),
        fastsurfer_required_files=sub.get("fastsurfer_required_files"),
        fastsurfer_input_files=stage_input_files(config, layout="fastsurfer"),
        include_templates=sub.get("include_templates", False),
        participants=read_participants(sub["participants"]) if sub.get("participants") else None,
    )


def stage_input_files(config: dict, layout: str = "") -> list[str]:
    """Subject-relative files the per-subject stages read (volumes of cache and radiomics), of
    FreeSurfer subjects or, with ``layout="fastsurfer"``, of FastSurfer subjects."""
    out: list[str] = []
    for section in ("cache", "radiomics"):
        settings = config.get(section) or {}
        if layout:
            settings = settings.get(layout) or {}
        for key in ("image", "atlas", "mask"):
            value = settings.get(key)
            if isinstance(value, str) and value not in out:
                out.append(value)
    return out


def discover_for_workflow(config: dict, main_process: bool = True) -> Discovery:
    """Discovery as the Snakefile needs it.

    The main Snakemake process scans the folders and writes the discovery files; job processes
    (cluster jobs re-parse the Snakefile) read those files instead of scanning again, so that
    every job sees the cohort the main process planned with.
    """
    outdir = config["outdir"]
    if not main_process and Path(ResultPaths(outdir).discovery_subjects()).exists():
        return read_discovery(outdir)
    discovery = discover_from_config(config)
    for notice in discovery.notices:
        log.info("%s", notice)
    write_discovery(discovery, outdir)
    return discovery


def read_discovery_subject_ids(subjects_tsv: str | Path) -> list[str]:
    """Subject ids of a ``discovery/subjects.tsv`` file, sorted."""
    return sorted(row["subject_id"] for row in _read_tsv(Path(subjects_tsv)))
