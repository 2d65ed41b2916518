"""Who the subjects are: legal ids, shards, participants (the person behind a session), and the
subjects list."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from damt.subject_tables import SubjectTableError, read_subject_table


class DiscoveryError(RuntimeError):
    """The configuration points at something that cannot be searched (e.g. a missing folder)."""


SUBJECT_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# FreeSurfer's longitudinal stream: timepoints "<tp>.long.<template>"; the template folder
# ("base") lists its cross-sectional timepoints in "base-tps".
LONG_RE = re.compile(r"(?P<tp>.+)\.long\.(?P<base>.+)")
BASE_TPS = "base-tps"
# BIDS subject and session labels as fMRIPrep/sMRIPrep name FreeSurfer folders.
BIDS_SESSION_RE = re.compile(r"(?P<sub>sub-[A-Za-z0-9]+)_ses-[A-Za-z0-9]+")


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
    """A mapping file with ``subject_id`` and ``participant`` columns, as spreadsheets write
    them (:func:`damt.subject_tables.read_subject_table`); rows lacking either are ignored."""
    try:
        frame = read_subject_table(path, required=("subject_id", "participant"))
    except SubjectTableError as exc:
        raise DiscoveryError(f"participants file {exc}") from exc
    frame = frame.dropna(subset=["subject_id", "participant"])
    frame = frame[(frame["subject_id"] != "") & (frame["participant"] != "")]
    return dict(zip(frame["subject_id"], frame["participant"], strict=True))


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
