"""PyRadiomics wrapper: ROI parsing, fidelity to PyRadiomics itself, bad input, table, CLI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from damt.cli import main as damt_main
from damt.config import schema_defaults
from damt.errors import SubjectError
from damt.features.radiomics import Roi, build_radiomics_table, parse_rois, radiomics_for_files
from damt.features.tables import read_table
from damt.results import FAILED, OK
from damt.stages.radiomics import RadiomicsStage
from damt.stages.store import SubjectTask, run_tasks, stage_dir
from damt.volumes import load_sitk
from tests.conftest import REPO, run_stage_shards
from tests.volume_fixtures import blob_volumes, make_subject, save_mgz

PARAMS = REPO / "config" / "radiomics.yaml"
ROIS = {"brain": ["nonzero"], "wm": [2], "hippo": [17]}


def test_parse_rois():
    rois = parse_rois({"a": ["nonzero"], "b": [3, "1000-1002", 42], "c": ["7-7"]})
    assert rois == [Roi("a", None), Roi("b", (3, 42, 1000, 1001, 1002)), Roi("c", (7,))]
    with pytest.raises(ValueError, match="empty range"):
        parse_rois({"x": ["9-3"]})
    with pytest.raises(ValueError, match="not a label"):
        parse_rois({"x": ["cortex"]})
    with pytest.raises(ValueError, match="not a label"):
        parse_rois({"x": ["nonzero", 3]})


def _stage(rois=ROIS) -> RadiomicsStage:
    r = schema_defaults("radiomics")
    stage = RadiomicsStage(PARAMS, rois, r["image"], r["atlas"], r["fastsurfer"], threads=1)
    stage.setup()
    return stage


def test_subject_features_and_columns(tmp_path: Path):
    subject = make_subject(tmp_path)
    res = _stage().compute(SubjectTask("s1", subject), tmp_path)
    row = pd.read_parquet(tmp_path / "radiomics.parquet")
    cols = [c for c in row.columns if c != "subject_id"]
    assert res.info["n_features"] == len(cols) == 3 * 75
    assert cols[0] == "brain_glcm_Autocorrelation"
    assert {c.split("_", 1)[0] for c in cols} == {"brain", "wm", "hippo"}
    assert np.isfinite(row[cols].to_numpy()).all()


@pytest.mark.slow
def test_wrapper_equals_pyradiomics_called_directly(tmp_path: Path, bert: Path):
    """Same numbers as PyRadiomics on NIfTI copies written by nibabel: no casting, orientation
    or mask mishap between the .mgz files and the extractor."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    image = nib.load(bert / "mri" / "brainmask.mgz")
    atlas = nib.load(bert / "mri" / "aparc+aseg.mgz")
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine), tmp_path / "t1.nii.gz")
    mask = (np.asanyarray(atlas.dataobj) == 17).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, atlas.affine), tmp_path / "hippo.nii.gz")
    direct = RadiomicsFeatureExtractor(str(PARAMS)).execute(
        str(tmp_path / "t1.nii.gz"), str(tmp_path / "hippo.nii.gz"), label=1
    )
    direct = {
        k.replace("original_", ""): float(v) for k, v in direct.items() if k.startswith("original_")
    }
    ours = radiomics_for_files(
        bert / "mri" / "brainmask.mgz", bert / "mri" / "aparc+aseg.mgz", PARAMS, label=17
    )
    ours = {c.removeprefix("label17_"): ours[c][0] for c in ours.columns if c != "subject_id"}
    assert ours.keys() == direct.keys() and len(ours) == 75
    for key, value in direct.items():
        assert ours[key] == value, key


def test_mgz_geometry_matches_nifti_read_by_itk(tmp_path: Path, bert: Path):
    img = nib.load(bert / "mri" / "brainmask.mgz")
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine), tmp_path / "t1.nii.gz")
    ours = load_sitk(bert / "mri" / "brainmask.mgz")
    itk = sitk.ReadImage(str(tmp_path / "t1.nii.gz"))
    assert ours.GetSize() == itk.GetSize()
    np.testing.assert_allclose(ours.GetOrigin(), itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.GetDirection(), itk.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(ours.GetSpacing(), itk.GetSpacing())
    assert ours.GetPixelID() == itk.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(itk))


@pytest.mark.slow
def test_real_subjects_yield_finite_values(tmp_path: Path, bert: Path, fsaverage: Path):
    from damt.config import validate_config

    cfg = validate_config({"subjects": {"dirs": [{"path": "."}]}})
    stage = _stage(cfg["radiomics"]["rois"])
    tasks = [SubjectTask("bert", bert), SubjectTask("fsaverage", fsaverage)]
    for res, _ in run_tasks(stage, tasks, tmp_path):
        assert res.status == OK, res.detail
        assert res.info["n_features"] == 300 and res.info["roi_errors"] == {}
        row = pd.read_parquet(
            stage_dir(tmp_path, res.subject_id, "radiomics") / "radiomics.parquet"
        )
        assert np.isfinite(row.drop(columns="subject_id").to_numpy()).all()


def test_corrupt_volume_is_reported(tmp_path: Path):
    subject = make_subject(tmp_path)
    target = subject / "mri" / "brainmask.mgz"
    target.write_bytes(target.read_bytes()[:200])  # truncated gzip stream
    ((res, _),) = run_tasks(_stage(), [SubjectTask("s1", subject)], tmp_path / "out")
    assert (res.status, res.reason) == (FAILED, "volume_unreadable")
    assert "brainmask.mgz" in res.detail


def test_grid_mismatch_is_reported(tmp_path: Path):
    subject = make_subject(tmp_path)
    image, labels = blob_volumes()
    shifted = np.eye(4)
    shifted[:3, 3] = [5.0, 0, 0]
    save_mgz(labels, subject / "mri" / "aparc+aseg.mgz", shifted)
    ((res, _),) = run_tasks(_stage(), [SubjectTask("s1", subject)], tmp_path / "out")
    assert (res.status, res.reason) == (FAILED, "grid_mismatch")
    small = make_subject(tmp_path, "s2", image[:30], labels[:30])
    save_mgz(labels, small / "mri" / "aparc+aseg.mgz")
    ((res, _),) = run_tasks(_stage(), [SubjectTask("s2", small)], tmp_path / "out")
    assert res.reason == "grid_mismatch" and "size" in res.detail


def test_empty_roi_keeps_other_rois(tmp_path: Path):
    subject = make_subject(tmp_path)
    stage = _stage({"brain": ["nonzero"], "absent": [53]})
    ((res, _),) = run_tasks(stage, [SubjectTask("s1", subject)], tmp_path / "out")
    assert res.status == OK and res.info["n_features"] == 75
    assert res.info["roi_errors"]["absent"].startswith("empty_roi")
    only_absent = _stage({"absent": [53]})
    ((res, _),) = run_tasks(only_absent, [SubjectTask("s1", subject)], tmp_path / "out2")
    assert (res.status, res.reason) == (FAILED, "empty_roi")


def test_nonfinite_intensities_are_reported(tmp_path: Path):
    image, labels = blob_volumes()
    image = image.astype(np.float32)
    image[20, 20, 20] = np.nan
    subject = make_subject(tmp_path, "s1", image, labels)
    ((res, _),) = run_tasks(_stage(), [SubjectTask("s1", subject)], tmp_path / "out")
    assert (res.status, res.reason) == (FAILED, "nonfinite_intensities")


def test_cohort_table_has_nan_rows_for_failed_subjects(tmp_path: Path):
    good = make_subject(tmp_path / "in", "good")
    bad = make_subject(tmp_path / "in", "bad")
    (bad / "mri" / "aparc+aseg.mgz").write_bytes(b"not a volume")
    out = tmp_path / "results"
    summaries = run_stage_shards(_stage(), tmp_path / "in", out, n_shards=1)
    table = build_radiomics_table(
        summaries, ["bad", "good", "late"], PARAMS, ROIS, out / "radiomics.parquet"
    )
    frame, meta = read_table(out / "radiomics.parquet")
    assert list(frame.subject_id) == ["bad", "good", "late"]
    assert frame.iloc[0, 1:].isna().all() and frame.iloc[2, 1:].isna().all()
    assert frame.iloc[1, 1:].notna().all()
    assert meta["failed"]["bad"].startswith("volume_unreadable")
    assert meta["params_sha256"] and meta["pyradiomics_version"] and meta["n_features"] == 225
    assert good.name in set(table.subject_id)


def test_cli_image_mask_on_nrrd(tmp_path: Path, capsys):
    image, labels = blob_volumes()
    for name, arr in (("img.nrrd", image), ("mask.nrrd", labels)):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name))
    out = tmp_path / "out.parquet"

    def run(label: str, *extra: str) -> int:
        return damt_main(
            [
                "radiomics",
                "--image",
                str(tmp_path / "img.nrrd"),
                "--mask",
                str(tmp_path / "mask.nrrd"),
                "--label",
                label,
                "--params",
                str(PARAMS),
                "-o",
                str(out),
                *extra,
            ]
        )

    assert run("2", "--subject-id", "x") == 0
    row = pd.read_parquet(out)
    assert row.subject_id[0] == "x" and row.shape == (1, 76)
    assert "label2_glcm_Contrast" in row.columns
    assert run("99") == 2
    assert "empty_roi" in capsys.readouterr().err


def test_cli_subject_dir(tmp_path: Path, capsys):
    subject = make_subject(tmp_path)
    out = tmp_path / "o" / "s1.parquet"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"subjects: {{dirs: [{{path: .}}]}}\nradiomics: {{params: {PARAMS}, "
        "rois: {brain: [nonzero], gone: [99]}}\n"
    )
    assert damt_main(["radiomics", str(subject), "-o", str(out), "--config", str(cfg)]) == 0
    assert pd.read_parquet(out).shape == (1, 76)
    assert "ROI gone: empty_roi" in capsys.readouterr().err


def test_subject_error_carries_reason():
    err = SubjectError("empty_roi", "detail")
    assert (err.reason, err.detail, str(err)) == ("empty_roi", "detail", "detail")
