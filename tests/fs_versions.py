"""FreeSurfer 5.x- and 6.0-style copies of bert's real stats files, for version-tolerance tests.

There are no real 5.x/6.0 subjects in ../shared, so these helpers rewrite bert's FreeSurfer 7
files the way the older versions differ (same numbers, older layout and spellings):

- 6.0: RCS ``$Id$`` in ``cvs_version``; aseg.stats has 22 ``# Measure`` lines (the two that 7.x
  moved to brainvol.stats are still there); ``*-Thalamus-Proper``; Destrieux names with ``&``;
  the ``# Measure Cortex, CortexVol`` line of ?h.aparc*.stats misses its comma; some integers
  print without a decimal point; some rows carry doubled or trailing spaces.
- 5.x: aseg.stats has 12 ``# Measure`` lines, ``IntraCranialVol, ICV`` and no eTIV,
  ``*CorticalWhiteMatter*``; no brainvol.stats and no ?h.aparc.pial.stats; ?h.aparc*.stats have
  the three cortex measures only; ``?h.aparc.DKTatlas40.stats``; ``?h.BA.stats`` /
  ``?h.BA.thresh.stats`` without ``_exvivo`` and without the entorhinal row, which is in
  ``?h.entorhinal_exvivo.stats`` instead (``mris_anatomical_stats -l``: one row, for the label).
"""

from __future__ import annotations

import re
from pathlib import Path

RCS_SEGSTATS_6 = "$Id: mri_segstats.c,v 1.121 2016/05/31 17:27:11 greve Exp $"
RCS_ANATOMICAL_6 = "$Id: mris_anatomical_stats.c,v 1.79 2016/03/14 15:15:34 greve Exp $"
RCS_SEGSTATS_5 = "$Id: mri_segstats.c,v 1.75.2.9 2013/02/16 00:09:33 greve Exp $"
RCS_ANATOMICAL_5 = "$Id: mris_anatomical_stats.c,v 1.69.2.1 2013/01/04 19:47:59 greve Exp $"
STAMP_6 = "freesurfer-Linux-centos6_x86_64-stable-pub-v6.0.0-2beba927\n"
STAMP_5 = "freesurfer-Linux-centos4_x86_64-stable-pub-v5.3.0\n"

# 5.x aseg.stats measures: (key, name, description, the bert key whose value it carries).
FS5_ASEG_MEASURES = (
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", "BrainSeg"),
    (
        "BrainSegNotVent",
        "BrainSegVolNotVent",
        "Brain Segmentation Volume Without Ventricles",
        "BrainSegNotVent",
    ),
    ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume", "lhCortex"),
    ("rhCortex", "rhCortexVol", "Right hemisphere cortical gray matter volume", "rhCortex"),
    ("Cortex", "CortexVol", "Total cortical gray matter volume", "Cortex"),
    (
        "lhCorticalWhiteMatter",
        "lhCorticalWhiteMatterVol",
        "Left hemisphere cortical white matter volume",
        "lhCerebralWhiteMatter",
    ),
    (
        "rhCorticalWhiteMatter",
        "rhCorticalWhiteMatterVol",
        "Right hemisphere cortical white matter volume",
        "rhCerebralWhiteMatter",
    ),
    (
        "CorticalWhiteMatter",
        "CorticalWhiteMatterVol",
        "Total cortical white matter volume",
        "CerebralWhiteMatter",
    ),
    ("SubCortGray", "SubCortGrayVol", "Subcortical gray matter volume", "SubCortGray"),
    ("TotalGray", "TotalGrayVol", "Total gray matter volume", "TotalGray"),
    ("SupraTentorial", "SupraTentorialVol", "Supratentorial volume", "SupraTentorial"),
    ("IntraCranialVol", "ICV", "Intracranial Volume", "EstimatedTotalIntraCranialVol"),
)


def _measure_values(text: str) -> dict[str, str]:
    """``# Measure`` key → value text."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# Measure "):
            parts = [p.strip() for p in line[len("# Measure ") :].split(",")]
            out[parts[0]] = parts[-2]
    return out


def _set_header(text: str, key: str, value: str) -> str:
    return re.sub(rf"^# {re.escape(key)} .*$", f"# {key} {value}", text, count=1, flags=re.M)


def _integers_without_point(text: str) -> str:
    """``1218061.000000`` → ``1218061`` in ``# Measure`` lines (as some versions print them)."""
    return re.sub(r"^(# Measure .*, )(\d+)\.0+(, \S+)$", r"\1\2\3", text, flags=re.M)


def _stray_spaces(text: str) -> str:
    """Double the spaces after the first field and add trailing spaces on every third row."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line and not line.startswith("#") and i % 3 == 0:
            lines[i] = re.sub(r"^(\s*\S+) ", r"\1   ", line) + "  "
    return "\n".join(lines)


def _insert_after(text: str, prefix: str, new_line: str) -> str:
    lines = text.splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    return "".join([*lines[: i + 1], new_line, *lines[i + 1 :]])


def _thalamus_proper(text: str) -> str:
    # Keep the row width: older files are aligned the same way.
    return re.sub(r"(Left|Right)-Thalamus(\s)", r"\1-Thalamus-Proper\2", text)


def make_fs6_subject(bert: Path, dst: Path) -> Path:
    """A FreeSurfer 6.0-style subject folder (stats/ and scripts/build-stamp.txt) at ``dst``."""
    src = bert / "stats"
    out = dst / "stats"
    out.mkdir(parents=True)
    brainvol = _measure_values((src / "brainvol.stats").read_text())
    for path in sorted(src.glob("*.stats")):
        text = path.read_text()
        name = path.name
        if name in ("aseg.stats", "wmparc.stats", "brainvol.stats") or "w-g.pct" in name:
            text = _set_header(text, "cvs_version", RCS_SEGSTATS_6)
        else:
            text = _set_header(text, "cvs_version", RCS_ANATOMICAL_6)
            text = text.replace(
                "# Measure Cortex, CortexVol, Total", "# Measure Cortex, CortexVol Total"
            )
        if name == "aseg.stats":
            text = _thalamus_proper(text)
            surf = (
                "# Measure BrainSegNotVentSurf, BrainSegVolNotVentSurf, Brain Segmentation Volume "
                f"Without Ventricles from Surf, {brainvol['BrainSegNotVentSurf']}, mm^3\n"
            )
            vox = (
                "# Measure SupraTentorialNotVentVox, SupraTentorialVolNotVentVox, Supratentorial "
                f"volume voxel count, {brainvol['SupraTentorialNotVentVox']}, mm^3\n"
            )
            text = _insert_after(text, "# Measure BrainSegNotVent, ", surf)
            text = _insert_after(text, "# Measure SupraTentorialNotVent, ", vox)
            text = _stray_spaces(_integers_without_point(text))
        if "a2009s" in name:
            text = text.replace("_and_", "&")
        (out / name).write_text(text)
    (dst / "scripts").mkdir()
    (dst / "scripts" / "build-stamp.txt").write_text(STAMP_6)
    return dst


def _fs5_aparc(text: str) -> str:
    keep = (
        "# Measure Cortex, NumVert,",
        "# Measure Cortex, WhiteSurfArea,",
        "# Measure Cortex, Mean",
    )
    lines = [
        line
        for line in text.split("\n")
        if not (line.startswith("# Measure") and not line.startswith(keep))
        and not line.startswith("# BrainVolStatsFixed")
    ]
    return _set_header("\n".join(lines), "cvs_version", RCS_ANATOMICAL_5)


def label_stats(annot_stats: Path, hemi: str, label: str) -> str:
    """An ``mris_anatomical_stats -l ?h.LABEL.label`` file (5.x) from the row of ``label`` in
    a real annotation stats file: same numbers, one row named by the label file."""
    lines = []
    for line in _fs5_aparc(annot_stats.read_text()).split("\n"):
        if line.startswith("# cmdline"):
            line = (
                f"# cmdline mris_anatomical_stats -mgz -f ../stats/{hemi}.{label}.stats -b "
                f"-l ./{hemi}.{label}.label bert {hemi} white "
            )
        elif line.startswith("# AnnotationFile") or line.startswith("# NRows"):
            continue
        elif line and not line.startswith("#"):
            if not line.startswith(label + " "):
                continue
            line = f"./{hemi}.{label}.label" + line[len(label) :]
        lines.append(line)
    return "\n".join(lines)


def make_fs5_subject(bert: Path, dst: Path) -> Path:
    """A FreeSurfer 5.x-style subject folder (stats/ and scripts/build-stamp.txt) at ``dst``."""
    src = bert / "stats"
    out = dst / "stats"
    out.mkdir(parents=True)
    aseg = (src / "aseg.stats").read_text()
    values = _measure_values(aseg)
    measures = "".join(
        f"# Measure {key}, {name}, {desc}, {values[bert_key]}, mm^3\n"
        for key, name, desc, bert_key in FS5_ASEG_MEASURES
    )
    lines = aseg.split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("# Measure"))
    body = [
        line
        for line in lines
        if not line.startswith("# Measure") and not line.startswith("# BrainVolStatsFixed")
    ]
    first -= sum(1 for line in lines[:first] if line.startswith("# BrainVolStatsFixed"))
    aseg5 = "\n".join(body[:first]) + "\n" + measures + "\n".join(body[first:])
    aseg5 = _set_header(_thalamus_proper(aseg5), "cvs_version", RCS_SEGSTATS_5)
    (out / "aseg.stats").write_text(_stray_spaces(_integers_without_point(aseg5)))
    (out / "wmparc.stats").write_text(
        _set_header((src / "wmparc.stats").read_text(), "cvs_version", RCS_SEGSTATS_5)
    )
    for hemi in ("lh", "rh"):
        for kind in ("aparc", "aparc.a2009s"):
            text = (src / f"{hemi}.{kind}.stats").read_text()
            (out / f"{hemi}.{kind}.stats").write_text(_fs5_aparc(text))
        dkt = (src / f"{hemi}.aparc.DKTatlas.stats").read_text()
        (out / f"{hemi}.aparc.DKTatlas40.stats").write_text(_fs5_aparc(dkt))
        for new, old in (("BA_exvivo", "BA"), ("BA_exvivo.thresh", "BA.thresh")):
            text = _fs5_aparc((src / f"{hemi}.{new}.stats").read_text())
            rows = [line for line in text.split("\n") if not line.startswith("entorhinal_exvivo")]
            text = "\n".join(rows).replace("_exvivo", "")
            (out / f"{hemi}.{old}.stats").write_text(text)
        (out / f"{hemi}.entorhinal_exvivo.stats").write_text(
            label_stats(src / f"{hemi}.BA_exvivo.stats", hemi, "entorhinal_exvivo")
        )
        wg = (src / f"{hemi}.w-g.pct.stats").read_text()
        (out / f"{hemi}.w-g.pct.stats").write_text(_set_header(wg, "cvs_version", RCS_SEGSTATS_5))
        (out / f"{hemi}.curv.stats").write_text((src / f"{hemi}.curv.stats").read_text())
    (dst / "scripts").mkdir()
    (dst / "scripts" / "build-stamp.txt").write_text(STAMP_5)
    return dst
