"""The discovery's files, exchanged with the workflow: ``discovery/subjects.tsv``,
``discovery/report.tsv`` and one membership file per shard, rewritten only when their content
changes (so that Snakemake reruns exactly the jobs whose subjects changed)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from damt.discovery.scan import Discovery, Finding, Subject
from damt.io import write_text_if_changed
from damt.paths import ResultPaths

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


def read_discovery_subject_ids(subjects_tsv: str | Path) -> list[str]:
    """Subject ids of a ``discovery/subjects.tsv`` file, sorted."""
    return sorted(row["subject_id"] for row in _read_tsv(Path(subjects_tsv)))
