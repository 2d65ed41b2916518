"""The synthetic cohort: determinism, format fidelity against bert, consistency, signal."""

from __future__ import annotations

import filecmp
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from damt.demo.anatomy import sample_phenotypes, synthesize
from damt.demo.cohort import generate_cohort
from damt.demo.stats_writer import label_stats, volume_measures
from damt.freesurfer.labels import ASEG_STATS_ROWS, DESIKAN_PARCELS

VOLUMES = ("brainmask.mgz", "aseg.mgz", "aparc+aseg.mgz")


def _table(path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """(ColHeaders, rows, measure keys) of a stats file, by plain line splitting."""
    headers, rows, measures = [], [], []
    for line in path.read_text().splitlines():
        if line.startswith("# ColHeaders"):
            headers = line.split()[2:]
        elif line.startswith("# Measure"):
            measures.append(line[len("# Measure ") :].split(",")[0].strip())
        elif line.strip() and not line.startswith("#"):
            rows.append(line.split())
    return headers, rows, measures


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, demo_cohort: Path):
    again = tmp_path / "again"
    generate_cohort(again, 4, seed=7, workers=1)
    cmp = filecmp.dircmp(demo_cohort, again)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    for sub in cmp.common_dirs:
        for part in ("mri", "stats", "scripts"):
            c = filecmp.dircmp(demo_cohort / sub / part, again / sub / part)
            _, mismatch, errors = filecmp.cmpfiles(
                demo_cohort / sub / part, again / sub / part, c.common_files, shallow=False
            )
            assert not mismatch and not errors and not c.left_only
    other = tmp_path / "other"
    generate_cohort(other, 1, seed=8, workers=1)
    assert (other / "sub-001" / "mri" / "brainmask.mgz").read_bytes() != (
        demo_cohort / "sub-001" / "mri" / "brainmask.mgz"
    ).read_bytes()


def test_layout_and_phenotypes(demo_cohort: Path):
    ph = pd.read_csv(demo_cohort / "phenotypes.tsv", sep="\t")
    assert list(ph.columns) == ["subject_id", "age", "sex"]
    assert list(ph.subject_id) == ["sub-001", "sub-002", "sub-003", "sub-004"]
    assert ph.age.between(20, 85).all() and set(ph.sex) <= {"F", "M"}
    for sid in ph.subject_id:
        for name in VOLUMES:
            assert (demo_cohort / sid / "mri" / name).is_file()
        for name in ("aseg.stats", "brainvol.stats", "lh.aparc.stats", "rh.aparc.stats"):
            assert (demo_cohort / sid / "stats" / name).is_file()


@pytest.mark.parametrize("name", VOLUMES)
def test_volume_headers_match_bert(demo_cohort: Path, bert: Path, name: str):
    ours = nib.load(demo_cohort / "sub-001" / "mri" / name)
    real = nib.load(bert / "mri" / name)
    assert isinstance(ours, nib.MGHImage)
    assert ours.shape == real.shape == (256, 256, 256)
    assert ours.header.get_zooms() == real.header.get_zooms()
    assert nib.aff2axcodes(ours.affine) == nib.aff2axcodes(real.affine) == ("L", "I", "A")
    assert ours.header.get_data_dtype() == real.header.get_data_dtype()
    np.testing.assert_allclose(ours.affine[:3, :3], real.affine[:3, :3])


def test_labels_are_freesurfer_ids_like_bert(demo_cohort: Path, bert: Path):
    ours = np.unique(np.asanyarray(nib.load(demo_cohort / "sub-002/mri/aparc+aseg.mgz").dataobj))
    real = np.unique(np.asanyarray(nib.load(bert / "mri/aparc+aseg.mgz").dataobj))
    parcels = {off + i for off in (1000, 2000) for i in DESIKAN_PARCELS}
    assert parcels <= set(ours.tolist())
    # Every label we write is one FreeSurfer writes in bert's aparc+aseg.
    assert set(ours.tolist()) <= set(real.tolist()) | {77}
    assert len(ours) >= 100


@pytest.mark.parametrize(
    "name", ["aseg.stats", "lh.aparc.stats", "rh.aparc.stats", "brainvol.stats"]
)
def test_stats_layout_matches_bert(demo_cohort: Path, bert: Path, name: str):
    o_head, o_rows, o_meas = _table(demo_cohort / "sub-001" / "stats" / name)
    r_head, r_rows, r_meas = _table(bert / "stats" / name)
    assert o_head == r_head
    assert o_meas == r_meas
    assert len(o_rows) == len(r_rows)
    assert all(len(row) == len(r_head) for row in o_rows)
    if o_rows:
        name_col = r_head.index("StructName")
        assert [r[name_col] for r in o_rows] == [r[name_col] for r in r_rows]


@pytest.mark.slow
def test_aseg_stats_agree_with_the_volumes(demo_cohort: Path):
    sub = demo_cohort / "sub-003"
    aseg = np.asanyarray(nib.load(sub / "mri" / "aseg.mgz").dataobj)
    t1 = np.asanyarray(nib.load(sub / "mri" / "brainmask.mgz").dataobj)
    counts = np.bincount(aseg.ravel(), minlength=256)
    head, rows, _ = _table(sub / "stats" / "aseg.stats")
    col = {h: i for i, h in enumerate(head)}
    assert len(rows) == len(ASEG_STATS_ROWS)  # every row FreeSurfer 7 writes
    for row in rows:
        seg = int(row[col["SegId"]])
        assert int(row[col["NVoxels"]]) == counts[seg], ASEG_STATS_ROWS[seg]
        if counts[seg]:
            assert float(row[col["normMean"]]) == pytest.approx(t1[aseg == seg].mean(), abs=1e-3)
            assert float(row[col["normMax"]]) == t1[aseg == seg].max()
    labels = np.asanyarray(nib.load(sub / "mri" / "aparc+aseg.mgz").dataobj)
    for hemi, off in (("lh", 1000), ("rh", 2000)):
        head, rows, _ = _table(sub / "stats" / f"{hemi}.aparc.stats")
        col = {h: i for i, h in enumerate(head)}
        for row, idx in zip(rows, DESIKAN_PARCELS, strict=True):
            assert int(row[col["GrayVol"]]) == np.count_nonzero(labels == off + idx)
            assert 1.0 < float(row[col["ThickAvg"]]) < 4.5
    brainvol = {
        m.split(",")[0].split()[-1]: float(m.split(",")[3])
        for m in (sub / "stats" / "brainvol.stats").read_text().splitlines()
    }
    assert brainvol["Mask"] == np.count_nonzero(t1)
    assert brainvol["lhCortex"] == np.count_nonzero((labels >= 1000) & (labels < 2000))


@pytest.mark.slow
def test_hidden_phenotypes_shape_the_anatomy():
    rng = np.random.default_rng(3)
    phenos = sample_phenotypes(8, rng)
    rows = []
    for i, ph in enumerate(phenos):
        sub = synthesize(ph, np.random.default_rng(100 + i))
        stats = label_stats(sub.aparc_aseg, sub.t1)
        m = volume_measures(sub, stats)
        rows.append(
            {
                "age": ph.age,
                "male": ph.sex == "M",
                "vent": m["VentricleChoroidVol"],
                "cortex": m["Cortex"],
                "etiv": sub.etiv,
                "thick": np.mean(list(sub.thickness.values())),
            }
        )
    df = pd.DataFrame(rows)
    assert df.age.corr(df.vent) > 0.7
    assert df.age.corr(df.thick) < -0.7
    assert df.age.corr(df.cortex / df.etiv) < -0.5
    assert df[df.male].etiv.mean() > df[~df.male].etiv.mean()
