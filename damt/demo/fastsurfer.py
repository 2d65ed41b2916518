"""Synthetic subjects in FastSurfer's output layout (v2.1–2.3), for tests and mixed demo cohorts.

No redistributable real FastSurfer output exists, so these folders follow the description in
``../shared/data/fastsurfer/README.md`` (FastSurfer's documentation and code, version by
version), limited to the files the workflow reads (no ``orig.mgz``, ``aseg.auto_noCCseg.mgz``,
surfaces or labels, to keep it fast): the segmentation module's ``mri/orig_nu.mgz``,
``mri/mask.mgz``,
``mri/aparc.DKTatlas+aseg.deep.mgz`` and ``stats/aseg+DKT.stats`` (written by FastSurfer's
``segstats.py``: no ``# Measure`` lines, ``Timestamp`` spellings, v2.3's
``# FastSurfer_version``), ``scripts/deep-seg.log`` (``Version:`` per invocation) and, v2.2+,
``scripts/build.log``; a surface run adds ``aseg.stats``, ``brainvol.stats``,
``?h.aparc.DKTatlas.mapped.stats`` (v2.3: also ``aseg.presurf.hypos.stats``, every row of
FreeSurfer's ASegStatsLUT as ``segstats.py --empty`` writes it), the symbolic link
``mri/aparc+aseg.mgz`` → ``aparc.DKTatlas+aseg.mapped.mgz``, ``scripts/recon-surf.log``
and, when it finished, ``scripts/recon-surf.done``. A failed surface run keeps the
``recon-all.done`` and the "finished without error" of ``recon-all-status.log`` that
FastSurfer's single-step ``recon-all`` calls leave behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from damt.demo.anatomy import SyntheticSubject
from damt.demo.stats_writer import (
    ASEG_COLUMNS,
    LabelStats,
    _table_cols,
    aparc_stats,
    aseg_stats,
    brainvol_stats,
    label_stats,
    volume_measures,
)
from damt.freesurfer.labels import ASEG_STATS_ROWS, DESIKAN_PARCELS, HEMI_OFFSET

VERSIONS = ("2.1.2", "2.2.0", "2.3.0")
RUNS = ("full", "seg_only", "failed")
# FreeSurfer release bundled for recon-surf (README, "Surface module").
BUNDLED_FREESURFER = {"2.1": "7.3.2", "2.2": "7.4.1", "2.3": "7.4.1"}
# The DKT atlas has no bankssts, frontalpole, temporalpole: their voxels join a neighbour.
DKT_MERGE = {1: 30, 32: 28, 33: 9}  # Desikan index → DKT index (superiortemporal, ...)
DKT_PARCELS = {i: n for i, n in DESIKAN_PARCELS.items() if i not in DKT_MERGE}
CC_LABELS = (251, 252, 253, 254, 255)  # the deep segmentation has no corpus callosum
BACKGROUND = 12  # intensity of the unmasked head around the brain in orig_nu.mgz


def dkt_labels(aparc_aseg: np.ndarray) -> np.ndarray:
    """The DKT atlas version of a Desikan aparc+aseg (``aparc.DKTatlas+aseg.mapped.mgz``)."""
    out = aparc_aseg.copy()
    for offset in HEMI_OFFSET.values():
        for src, dst in DKT_MERGE.items():
            out[aparc_aseg == offset + src] = offset + dst
    return out


def dkt_deep_segmentation(aparc_aseg: np.ndarray, centre_i: int) -> np.ndarray:
    """``aparc.DKTatlas+aseg.deep.mgz`` of a subject: DKT cortex labels, no corpus callosum."""
    out = dkt_labels(aparc_aseg)
    cc = np.isin(aparc_aseg, CC_LABELS)
    left = np.arange(out.shape[0])[:, None, None] >= centre_i  # LIA: i grows to the left
    out[cc & left] = 2
    out[cc & ~left] = 41
    return out


def _segstats_name(label: int) -> str:
    if label in ASEG_STATS_ROWS:
        return ASEG_STATS_ROWS[label]
    hemi = "lh" if label < 2000 else "rh"
    return f"ctx-{hemi}-{DESIKAN_PARCELS[label - HEMI_OFFSET[hemi]]}"


def _segstats_file(
    version: str,
    cmdline: str,
    segfile: str,
    measures: list[str],
    rows: list[tuple[int, int, float, float, float, float, float]],
    report_empty: bool,
    volume_precision: int,
) -> str:
    """A stats file as FastSurfer's ``segstats.py`` writes it: ``rows`` are ``(label, voxels,
    volume, mean, sd, min, max)``, ``measures`` its ``# Measure`` lines (imported ones)."""
    head = ["# Title Segmentation Statistics \n", "# \n", "# generating_program segstats.py\n"]
    if version >= "2.3":
        head.append(f"# FastSurfer_version {version}\n")
    head += [
        f"# cmdline {cmdline} (synthetic: damt demo-data)\n",
        "# sysname  Linux\n# hostname damt-demo\n# machine  x86_64\n# user       damt\n",
        "# anatomy_type volume\n# \n",
        *measures,
        f"# SegVolFile {segfile}\n",
        "# SegVolFileTimestamp 2024/01/01 00:00:00\n",
        "# PVVolFile mri/orig_nu.mgz\n# PVVolFileTimestamp 2024/01/01 00:00:00\n",
        "# Excluding Cortical Gray and White Matter\n# ExcludeSegId 0 2 3 41 42\n",
    ]
    fixed = "# compatibility with freesurfer's mri_segstats: fixed\n"
    # segstats.py writes this line whenever it has a colour table, --empty or not.
    only = "# Only reporting non-empty segmentations\n"
    head += [only, fixed] if version >= "2.3" else [fixed, only]
    rows = [row for row in rows if row[1] > 0 or report_empty]
    head += [
        "# VoxelVolume_mm3 1.0\n",
        _table_cols(ASEG_COLUMNS),
        f"# NRows {len(rows)} \n# NTableCols {len(ASEG_COLUMNS)} \n",
        "# ColHeaders  " + " ".join(c[0] for c in ASEG_COLUMNS) + "\n",
    ]
    body = [
        f"{idx:3d} {lab:4d} {cnt:9d} {vol:10.{volume_precision}f}  {_segstats_name(lab):<40s} "
        f"{mean:10.4f} {sd:10.4f} {lo:10.4f} {hi:10.4f} {hi - lo:10.4f}\n"
        for idx, (lab, cnt, vol, mean, sd, lo, hi) in enumerate(rows, 1)
    ]
    return "".join(head + body)


def _label_rows(stats: LabelStats, labels: list[int]) -> list[tuple]:
    """``(label, voxels, volume, mean, sd, min, max)`` of ``labels``; zeros for absent ones."""
    rows = []
    for lab in labels:
        cnt = int(stats.count[lab]) if lab < len(stats.count) else 0
        if cnt == 0:
            rows.append((lab, 0, 0.0, 0.0, 0.0, 0.0, 0.0))
            continue
        rows.append((lab, cnt, float(cnt), stats.mean[lab], stats.std[lab],
                     stats.vmin[lab], stats.vmax[lab]))  # fmt: skip
    return rows


def segstats_text(sub: SyntheticSubject, seg: np.ndarray, image: np.ndarray, version: str) -> str:
    """``stats/aseg+DKT.stats`` as FastSurfer's ``segstats.py`` writes it."""
    labels = sorted(
        set(ASEG_STATS_ROWS) | {HEMI_OFFSET[h] + i for h in HEMI_OFFSET for i in DKT_PARCELS}
    )
    cmdline = (
        f"segstats.py --segfile mri/aparc.DKTatlas+aseg.deep.mgz --sid {sub.phenotype.subject_id}"
    )
    rows = _label_rows(label_stats(seg, image), labels)
    return _segstats_file(version, cmdline, "mri/aparc.DKTatlas+aseg.deep.mgz", [], rows, False, 3)


def presurf_hypos_text(sub: SyntheticSubject, stats: LabelStats, aseg_text: str) -> str:
    """``stats/aseg.presurf.hypos.stats`` as FastSurfer 2.3's recon-surf writes it:
    ``segstats.py --empty`` over every row of FreeSurfer's ASegStatsLUT (the empty ones
    with zeros), with the ``# Measure`` lines it imports from ``aseg.stats`` and its voxel
    volume (the layout of that call, run on a demo subject)."""
    imported = [line + "\n" for line in aseg_text.splitlines() if line.startswith("# Measure ")]
    imported.append("# Measure vox_vol, Voxel volume, The volume of a voxel, 1.000000, mm^3\n")
    cmdline = (
        f"segstats.py --sid {sub.phenotype.subject_id} --segfile mri/aseg.presurf.hypos.mgz "
        "--excludeid 0 2 3 41 42 --empty --volume_precision 1 "
        "measures --file stats/aseg.stats --import all"
    )
    rows = _label_rows(stats, sorted(ASEG_STATS_ROWS))
    return _segstats_file("2.3.0", cmdline, "mri/aseg.presurf.hypos.mgz", imported, rows, True, 1)


def _deep_seg_log(version: str) -> str:
    return (
        f"Version: {version}\nLog file for segmentation FastSurferCNN/run_prediction.py\n"
        "Reading volume mri/orig/001.mgz\nRunning view aggregation on cpu\n"
        "Saving segmentation to mri/aparc.DKTatlas+aseg.deep.mgz\n"
    )


def _recon_surf_done(sid: str, version: str) -> str:
    return (
        "------------------------------\n"
        f"SUBJECT {sid}\nSTART_TIME Mon Jan  1 00:00:00 UTC 2024\n"
        "END_TIME Mon Jan  1 01:03:00 UTC 2024\nRUNTIME_HOURS 1.050\nUSER damt\n"
        "HOST damt-demo\nPROCESSOR x86_64\nOS Linux\nUNAME Linux damt-demo\nVERSION $Id$\n"
        "CMDPATH ./recon-surf.sh\n"
        f"CMDARGS --sid {sid} --sd . --t1 mri/orig.mgz --asegdkt_segfile "
        f"mri/aparc.DKTatlas+aseg.deep.mgz (synthetic, FastSurfer {version})\n"
    )


def _recon_all_done(sid: str, fs_version: str) -> str:
    # What recon-surf's single-step recon-all calls leave, finished or not.
    return (
        "------------------------------\n"
        f"SUBJECT {sid}\nSTART_TIME Mon Jan  1 00:50:00 UTC 2024\n"
        "END_TIME Mon Jan  1 00:51:00 UTC 2024\nRUNTIME_HOURS 0.017\nUSER damt\n"
        f"VERSION {fs_version} (freesurfer-linux-ubuntu22_x86_64-{fs_version}-20230614)\n"
        f"CMDARGS -s {sid} -hemi lh -smooth2 -inflate2 -curvHK -no-isrunning\n"
    )


def write_fastsurfer_files(
    folder: Path,
    sub: SyntheticSubject,
    affine: np.ndarray,
    day: int,
    version: str,
    run: str,
    save_mgz: Callable[[np.ndarray, np.ndarray, Path], None],
) -> None:
    """Write one FastSurfer-layout subject folder (``run``: full, seg_only or failed)."""
    if version not in VERSIONS or run not in RUNS:
        raise ValueError(f"FastSurfer demo: version in {VERSIONS}, run in {RUNS}")
    sid = sub.phenotype.subject_id
    seg = dkt_deep_segmentation(sub.aparc_aseg, int(sub.centre_vox[0]))
    mask = (sub.aparc_aseg > 0).astype(np.uint8)
    orig_nu = np.where(mask > 0, sub.t1, BACKGROUND).astype(np.uint8)
    mri, stats_dir, scripts = folder / "mri", folder / "stats", folder / "scripts"
    for d in (mri, stats_dir, scripts):
        d.mkdir(parents=True, exist_ok=True)
    save_mgz(orig_nu, affine, mri / "orig_nu.mgz")
    save_mgz(mask, affine, mri / "mask.mgz")
    save_mgz(seg, affine, mri / "aparc.DKTatlas+aseg.deep.mgz")
    (stats_dir / "aseg+DKT.stats").write_text(segstats_text(sub, seg, orig_nu, version))
    (scripts / "deep-seg.log").write_text(_deep_seg_log(version))
    if version >= "2.2":
        (scripts / "build.log").write_text(
            f"python3 run_fastsurfer.py --sid {sid}\ndate: 2024-01-01\nversion: {version}\n"
        )
    if run == "seg_only":
        return
    fs_version = BUNDLED_FREESURFER[version[:3]]
    save_mgz(sub.t1, affine, mri / "brainmask.mgz")
    mapped = dkt_labels(sub.aparc_aseg)
    save_mgz(mapped, affine, mri / "aparc.DKTatlas+aseg.mapped.mgz")
    link = mri / "aparc+aseg.mgz"
    if os.path.lexists(link):
        link.unlink()
    link.symlink_to("aparc.DKTatlas+aseg.mapped.mgz")
    stats = label_stats(mapped, sub.t1)
    measures = volume_measures(sub, stats)
    aseg_text = aseg_stats(sub, stats, measures)
    (stats_dir / "aseg.stats").write_text(aseg_text)
    if version >= "2.3":
        (stats_dir / "aseg.presurf.hypos.stats").write_text(
            presurf_hypos_text(sub, stats, aseg_text)
        )
    (stats_dir / "brainvol.stats").write_text(brainvol_stats(measures))
    for hemi in ("lh", "rh"):
        (stats_dir / f"{hemi}.aparc.DKTatlas.mapped.stats").write_text(
            aparc_stats(sub, stats, measures, hemi, day, DKT_PARCELS, "aparc.DKTatlas.mapped")
        )
    (scripts / "build-stamp.txt").write_text(
        f"freesurfer-linux-ubuntu22_x86_64-{fs_version}-20230614-3b4b0ab\n"
    )
    (scripts / "recon-all.done").write_text(_recon_all_done(sid, fs_version))
    (scripts / "recon-all-status.log").write_text(
        f"#@# recon-all -s {sid} -hemi lh -smooth2 finished without error at "
        "Mon Jan  1 00:51:00 UTC 2024\n"
    )
    log = f"recon-surf.sh --sid {sid} --sd . --t1 mri/orig.mgz\n"
    log += f"recon-all -s {sid} -hemi lh -smooth2 -inflate2 finished without error\n"
    if run == "failed":
        log += (
            "mris_make_surfaces -aseg aseg.presurf -white white.preaparc -noaparc -mgz lh\n"
            "ERROR: mris_make_surfaces failed: surface lh.white has self-intersections\n"
        )
        (scripts / "recon-surf.log").write_text(log)
        return
    (scripts / "recon-surf.log").write_text(log + "recon-surf.sh finished\n")
    (scripts / "recon-surf.done").write_text(_recon_surf_done(sid, version))
