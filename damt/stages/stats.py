"""The per-subject ``stats`` stage: parse a subject's ``stats/`` into its long table.

Adapts :mod:`damt.freesurfer.stats` (the parser) to the shard jobs of :mod:`damt.stages.store`.
A subject fails only when nothing can be parsed (reasons ``stats_missing``,
``stats_unreadable``, ``stats_malformed``); a single malformed or unreadable file is recorded in
``info["file_errors"]`` and the subject stays ``ok`` (the tables give that file's columns NaN).
"""

from __future__ import annotations

from pathlib import Path

from damt.errors import SubjectError
from damt.freesurfer.harmonize import HARMONIZATION_VERSION
from damt.freesurfer.stats.long_table import write_long_table
from damt.freesurfer.stats.subject import SubjectStats, parse_subject_stats, stats_input_files
from damt.results import OK
from damt.stages.store import Stage, SubjectResult, SubjectTask

STAGE = "stats"
LONG_FILE = "stats.parquet"
# FreeSurfer's own QC numbers, kept in the result so the manifest needs no second read.
QC_MEASURES = {"SurfaceHoles": "surface_holes", "EstimatedTotalIntraCranialVol": "etiv"}


def freesurfer_qc(subject: SubjectStats) -> dict[str, float]:
    """Surface defect holes and eTIV from the ``# Measure`` lines (first file that has them)."""
    found: dict[str, float] = {}
    for stats_file in subject.files:
        for m in stats_file.measures:
            name = QC_MEASURES.get(m.key)
            if name is not None and name not in found:
                found[name] = m.value
    return found


class StatsStage(Stage):
    """Parse every modelled stats file of a subject into ``stats.parquet`` (long table)."""

    name = STAGE
    # 3: nan/inf values become NaN and are listed in info["nonfinite_values"]; 4: label-based
    # stats files parsed, FreeSurfer version from recon-all.done or 5.x/6.0 RCS dates,
    # FastSurfer's files and info["segmenter"]
    version = "4"

    def params(self) -> dict:
        return {"harmonization": HARMONIZATION_VERSION}

    def input_files(self, task: SubjectTask) -> list[Path]:
        return stats_input_files(task.path)

    def compute(self, task: SubjectTask, workdir: Path) -> SubjectResult:
        subject = parse_subject_stats(task.path, task.subject_id)
        errors = subject.file_errors()
        if not subject.files:
            if not subject.errors:
                found = f" (found only: {', '.join(subject.skipped)})" if subject.skipped else ""
                raise SubjectError(
                    "stats_missing", f"{subject.stats_dir} holds no stats file to parse{found}"
                )
            unreadable = all(e.reason == "unreadable" for e in subject.errors.values())
            raise SubjectError(
                "stats_unreadable" if unreadable else "stats_malformed",
                "no stats file could be parsed: " + "; ".join(errors.values()),
            )
        write_long_table(subject, workdir / LONG_FILE)
        info = {
            "fs_version": subject.fs_version,
            "fs_version_source": subject.fs_version_source,
            "segmenter": subject.segmenter,
            "segmenter_version": subject.segmenter_version or subject.fs_version,
            "files": [f.name for f in subject.files],
            "skipped": subject.skipped,
            "file_errors": errors,
            "qc": freesurfer_qc(subject),
        }
        # FreeSurfer itself writes "-nan" for the SNR of the empty "unknown" row of
        # ?h.w-g.pct.stats: kept as missing and listed, but not a QC issue.
        expected, unexpected = {}, {}
        for f in subject.files:
            name = Path(f.path).name
            for note in f.nonfinite:
                bucket = expected if " of unknown = " in note else unexpected
                bucket.setdefault(name, []).append(note)
        for key, found in (("nonfinite_expected", expected), ("nonfinite_values", unexpected)):
            if found:
                info[key] = {
                    name: f"{name}: {len(notes)} value(s) not a finite number, kept as missing "
                    f"({'; '.join(notes[:5])}{'; ...' if len(notes) > 5 else ''})"
                    for name, notes in found.items()
                }
        names = sorted(
            {f.subject_name for f in subject.files if f.subject_name} - {task.subject_id}
        )
        if names:
            # Often harmless (a renamed folder), sometimes stats copied from another subject.
            info["header_subject_names"] = names
        return SubjectResult(task.subject_id, OK, outputs={"long": LONG_FILE}, info=info)
