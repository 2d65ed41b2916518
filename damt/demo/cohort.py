"""``damt demo-data``: write a synthetic SUBJECTS_DIR in real FreeSurfer format.

Each subject gets ``mri/brainmask.mgz`` (uint8), ``mri/aseg.mgz`` and ``mri/aparc+aseg.mgz``
(int32), 256³ at 1 mm in LIA orientation like ``recon-all``'s conformed space, and FreeSurfer 7
``stats/`` files whose numbers are computed from those volumes. ``phenotypes.tsv`` beside the
subjects holds the hidden age and sex. The same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from damt import __version__
from damt.demo.anatomy import Phenotype, sample_phenotypes, synthesize, vox2ras
from damt.demo.fastsurfer import write_fastsurfer_files
from damt.demo.stats_writer import FS_VERSION, stats_files
from damt.io import atomic_path, write_bytes_atomic

log = logging.getLogger(__name__)
PHENOTYPES_FILE = "phenotypes.tsv"


def _save_mgz(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.MGHImage(data, affine)
    img.header.set_zooms((1.0, 1.0, 1.0))
    with atomic_path(path) as tmp:
        # nibabel picks the format from the suffix, so keep ".mgz" on the temporary name.
        tmp_mgz = tmp.with_suffix(".mgz")
        nib.save(img, tmp_mgz)
        tmp_mgz.replace(tmp)


def _write_subject(
    args: tuple[Phenotype, np.random.SeedSequence, str, int, tuple[str, str] | None],
) -> str:
    ph, seed_seq, out, day, fastsurfer = args
    sub = synthesize(ph, np.random.default_rng(seed_seq))
    folder = Path(out) / ph.subject_id
    affine = vox2ras(sub.c_ras)
    if fastsurfer is not None:
        write_fastsurfer_files(folder, sub, affine, day, *fastsurfer, save_mgz=_save_mgz)
        return ph.subject_id
    _save_mgz(sub.t1, affine, folder / "mri" / "brainmask.mgz")
    _save_mgz(sub.aseg, affine, folder / "mri" / "aseg.mgz")
    _save_mgz(sub.aparc_aseg, affine, folder / "mri" / "aparc+aseg.mgz")
    for name, text in stats_files(sub, day).items():
        write_bytes_atomic(folder / "stats" / name, text.encode("utf-8"))
    stamp = f"damt-demo-data-{__version__} synthetic subject in FreeSurfer {FS_VERSION} layout\n"
    write_bytes_atomic(folder / "scripts" / "build-stamp.txt", stamp.encode("utf-8"))
    return ph.subject_id


def generate_cohort(
    out: str | Path,
    n_subjects: int = 16,
    seed: int = 0,
    workers: int | None = None,
    prefix: str = "sub-",
    fastsurfer: tuple[str, str] | None = None,
) -> list[Phenotype]:
    """Write ``n_subjects`` synthetic subjects and ``phenotypes.tsv`` into ``out``.

    Subjects are independent draws from ``seed`` (one child seed each), so the result does not
    depend on ``workers``. Existing subject folders of the same name are overwritten.
    ``fastsurfer=(version, run)`` writes them in FastSurfer's layout instead
    (:mod:`damt.demo.fastsurfer`; version 2.1.2, 2.2.0 or 2.3.0; run full, seg_only or failed).
    """
    if n_subjects < 1:
        raise ValueError("n_subjects must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    pheno_seq, *subject_seqs = root.spawn(n_subjects + 1)
    phenotypes = sample_phenotypes(n_subjects, np.random.default_rng(pheno_seq), prefix=prefix)
    jobs = [
        (ph, sq, str(out), 1 + i % 28, fastsurfer)
        for i, (ph, sq) in enumerate(zip(phenotypes, subject_seqs, strict=True))
    ]
    workers = workers or min(n_subjects, os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for sid in pool.map(_write_subject, jobs):
                log.info("wrote %s", sid)
    else:
        for job in jobs:
            log.info("wrote %s", _write_subject(job))

    with atomic_path(out / PHENOTYPES_FILE) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["subject_id", "age", "sex"])
        for ph in phenotypes:
            w.writerow([ph.subject_id, f"{ph.age:.1f}", ph.sex])
    return phenotypes


def ensure_demo_cohort(config: dict) -> bool:
    """Generate the configured demo cohort if ``demo.enabled`` and its folder is missing.

    Returns True when a cohort was written. The phenotypes file is written last, so its
    presence marks a complete cohort (an interrupted generation is redone).
    """
    demo = config["demo"]
    if not demo["enabled"]:
        return False
    out = Path(demo["out"])
    if (out / PHENOTYPES_FILE).is_file():
        return False
    log.info(
        "generating the demo cohort (%d subjects, seed %d) in %s",
        demo["subjects"],
        demo["seed"],
        out,
    )
    generate_cohort(out, demo["subjects"], demo["seed"])
    return True
