"""Training cache: the MONAI chain once per subject, label remapping, QC measures, bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from damt.config import schema_defaults, validate_config
from damt.freesurfer.labels import LabelTable, read_label_table
from damt.results import FAILED, OK
from damt.stages.cache import (
    ATLAS_FILE,
    IMAGE_FILE,
    CacheSettings,
    CacheStage,
    monai_chain,
    stage_from_settings,
)
from damt.stages.store import SubjectTask, run_tasks, stage_dir
from tests.conftest import REPO, qc_settings
from tests.volume_fixtures import blob_volumes, make_subject, save_mgz

TABLE = REPO / "config" / "labels" / "freesurfer7_aparc+aseg.tsv"


def _settings(**changes) -> CacheSettings:
    """The schema's cache settings, with ``changes``."""
    return replace(CacheSettings.from_config(schema_defaults("cache")), **changes)


def _stage(settings: CacheSettings | None = None) -> CacheStage:
    cache = schema_defaults("cache")
    volumes = (cache["image"], cache["atlas"], cache["fastsurfer"])
    stage = CacheStage(TABLE, settings or _settings(min_size=48), *volumes)
    stage.setup()
    return stage


def _run(stage, subject: Path, out: Path):
    ((res, _),) = run_tasks(stage, [SubjectTask(subject.name, subject)], out)
    return res


def test_label_table():
    table = read_label_table(TABLE)
    assert table.n_classes == 112
    assert table.labels[0] == 0 and table.names[0] == "Unknown+ctx-lh-unknown+ctx-rh-unknown"
    assert "ctx-rh-insula" in table.names and 1004 not in table.labels
    classes, unknown = table.remap(np.array([0, 2, 2035, 1004, 1004, 9999]))
    assert classes.tolist() == [0, 1, 111, 0, 0, 0] and classes.dtype == np.uint8
    assert unknown == {1004: 2, 9999: 1}


def test_freesurfer_unknown_cortex_labels_are_known_background(tmp_path: Path):
    """Issue 18, case 9: FreeSurfer 5.x/6.0's ctx-lh-unknown/ctx-rh-unknown (1000/2000) were
    reported as unexpected labels for every such subject."""
    table = read_label_table(TABLE)
    assert {1000, 2000} <= set(table.labels.tolist()) and table.n_classes == 112
    classes, unknown = table.remap(np.array([1000, 2000, 1001]))
    assert classes.tolist() == [0, 0, 44] and unknown == {}
    image, labels = blob_volumes()
    labels[labels == 17] = 1000
    res = _run(_stage(), make_subject(tmp_path, "s1", image, labels), tmp_path / "out")
    assert res.status == OK and res.info["unexpected_labels"] == {}
    assert 1000 in res.info["labels_present"]


def test_label_table_errors(tmp_path: Path):
    bad = tmp_path / "t.tsv"
    bad.write_text("index\tlabel\tname\n0\t2\tWM\n")
    with pytest.raises(ValueError, match="row 0 must map label 0"):
        read_label_table(bad)
    bad.write_text("index\tlabel\tname\n0\t0\tUnknown\n2\t4\tX\n")
    with pytest.raises(ValueError, match=r"run 0\.\.K-1"):
        read_label_table(bad)
    bad.write_text("id\tlabel\n")
    with pytest.raises(ValueError, match="header"):
        read_label_table(bad)
    with pytest.raises(ValueError, match="twice"):
        LabelTable([0, 2, 2], ["a", "b", "c"])
    bad.write_text("index\tlabel\tname\n0\t0\tUnknown\n1\t2\tA\n2\t3\tB\n1\t4\tC\n")
    with pytest.raises(ValueError, match=r"run 0\.\.K-1 in order"):  # merged rows not adjacent
        read_label_table(bad)


def test_label_table_merges_classes(tmp_path: Path):
    """Consecutive rows with one index merge their labels into one class."""
    path = tmp_path / "merged.tsv"
    path.write_text(
        "# hippocampi and amygdalae as one class each\n"
        "index\tlabel\tname\n0\t0\tUnknown\n1\t2\tLeft-WM\n"
        "2\t17\tLeft-Hippocampus\n2\t53\tRight-Hippocampus\n"
        "3\t18\tLeft-Amygdala\n3\t54\tRight-Amygdala\n4\t41\tRight-WM\n"
    )
    table = read_label_table(path)
    assert table.n_classes == 5
    assert table.names == [
        "Unknown",
        "Left-WM",
        "Left-Hippocampus+Right-Hippocampus",
        "Left-Amygdala+Right-Amygdala",
        "Right-WM",
    ]
    classes, unknown = table.remap(np.array([0, 2, 17, 53, 18, 54, 41, 42]))
    assert classes.tolist() == [0, 1, 2, 2, 3, 3, 4, 0] and unknown == {42: 1}


def test_cache_of_a_subject(tmp_path: Path):
    subject = make_subject(tmp_path)
    res = _run(_stage(), subject, tmp_path / "out")
    assert res.status == OK
    where = stage_dir(tmp_path / "out", subject.name, "cache")
    image = np.load(where / IMAGE_FILE, mmap_mode="r")
    atlas = np.load(where / ATLAS_FILE, mmap_mode="r")
    assert isinstance(image, np.memmap) and image.dtype == np.float16
    assert atlas.dtype == np.uint8 and atlas.shape == image.shape
    assert min(image.shape) >= 48  # padded to min_size
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    table = read_label_table(TABLE)
    assert set(np.unique(atlas)) == {
        0,
        *(int(table.classes[np.flatnonzero(table.labels == lab)[0]]) for lab in (2, 17, 1001)),
    }
    assert res.info["n_classes"] == 112 and res.info["labels_present"] == [2, 17, 1001]
    assert res.info["voxel_size"] == [1.0, 1.0, 1.0]


@pytest.mark.slow
def test_cache_matches_original_monai_chain_on_bert(tmp_path: Path, bert: Path):
    """The stage's arrays equal the original per-sample MONAI chain (LoadImaged from file)."""
    from monai import transforms as T

    settings = _settings()
    res = _run(_stage(settings), bert, tmp_path)
    where = stage_dir(tmp_path, "bert", "cache")
    load = T.Compose(
        [
            T.LoadImaged(keys=["image", "atlas"], reader="NibabelReader", image_only=True),
            T.EnsureChannelFirstd(keys=["image", "atlas"]),
        ]
    )
    sample = load(
        {"image": str(bert / "mri/brainmask.mgz"), "atlas": str(bert / "mri/aparc+aseg.mgz")}
    )
    out = monai_chain(settings)(sample)
    np.testing.assert_array_equal(
        np.load(where / IMAGE_FILE), out["image"][0].numpy().astype(np.float16)
    )
    classes, _ = read_label_table(TABLE).remap(out["atlas"][0].numpy())
    np.testing.assert_array_equal(np.load(where / ATLAS_FILE), classes)
    # RAS voxel axes: the left hemisphere (ctx-lh-*) lies at lower first-axis indices.
    atlas = np.load(where / ATLAS_FILE)
    table = read_label_table(TABLE)
    lh = np.isin(atlas, np.flatnonzero((table.labels >= 1000) & (table.labels < 2000)))
    rh = np.isin(atlas, np.flatnonzero(table.labels >= 2000))
    assert np.argwhere(lh)[:, 0].mean() < np.argwhere(rh)[:, 0].mean()
    assert res.info["unexpected_labels"] == {} and len(np.unique(atlas)) == 110
    assert all(s >= 128 for s in atlas.shape)


@pytest.mark.slow
def test_fsaverage_labels_outside_the_table_are_reported(tmp_path: Path, fsaverage: Path):
    res = _run(_stage(_settings()), fsaverage, tmp_path)
    assert res.status == OK
    # Issue 18, case 9: 1000/2000 (ctx-?h-unknown) are in the label table, as background.
    assert set(res.info["unexpected_labels"]) == {"1004", "2004"}
    assert set(res.info["cache_unknown_labels"]) == {"1004", "2004"}


def test_corrupt_volume(tmp_path: Path):
    subject = make_subject(tmp_path)
    target = subject / "mri" / "aparc+aseg.mgz"
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    res = _run(_stage(), subject, tmp_path / "out")
    assert (res.status, res.reason) == (FAILED, "volume_unreadable")
    assert "aparc+aseg.mgz" in res.detail
    assert sorted(p.name for p in stage_dir(tmp_path / "out", "s1", "cache").iterdir()) == [
        "result.json"
    ]


def test_grid_mismatch(tmp_path: Path):
    image, labels = blob_volumes()
    subject = make_subject(tmp_path, "s1", image, labels)
    save_mgz(labels, subject / "mri" / "aparc+aseg.mgz", np.diag([1.2, 1.2, 1.2, 1.0]))
    res = _run(_stage(), subject, tmp_path / "out")
    assert (res.status, res.reason) == (FAILED, "grid_mismatch")
    assert "spacing" in res.detail


def test_nonfinite_and_empty_images(tmp_path: Path):
    image, labels = blob_volumes()
    bad = image.astype(np.float32)
    bad[5, 5, 5] = np.inf
    res = _run(_stage(), make_subject(tmp_path, "inf", bad, labels), tmp_path / "out")
    assert (res.reason, res.detail) == (
        "nonfinite_intensities",
        "mri/brainmask.mgz has 1 non-finite voxels",
    )
    res = _run(
        _stage(), make_subject(tmp_path, "zero", np.zeros_like(image), labels), tmp_path / "out"
    )
    assert res.reason == "empty_image"


def test_negative_labels_fail_the_subject_with_a_reason(tmp_path: Path):
    """A bad-data failure (stored, reason negative_labels), not an unexpected error."""
    image, labels = blob_volumes()
    labels[labels == 17] = -3
    subject = make_subject(tmp_path, "s1", image, labels)
    res = _run(_stage(), subject, tmp_path / "out")
    assert (res.status, res.reason) == (FAILED, "negative_labels")
    assert (
        res.detail
        == f"mri/aparc+aseg.mgz has {int((labels == -3).sum())} voxels with negative labels (-3)"
    )
    assert res.reusable
    ((_, reused),) = run_tasks(_stage(), [SubjectTask("s1", subject)], tmp_path / "out")
    assert reused


def test_unknown_label_is_background_and_reported(tmp_path: Path):
    image, labels = blob_volumes()
    labels[labels == 17] = 12345
    res = _run(_stage(), make_subject(tmp_path, "s1", image, labels), tmp_path / "out")
    assert res.status == OK
    assert res.info["unexpected_labels"] == {"12345": int((labels == 12345).sum())}
    assert res.info["labels_present"] == [2, 1001, 12345]
    assert "12345" in res.info["cache_unknown_labels"]


def test_settings_change_recomputes(tmp_path: Path):
    subject = make_subject(tmp_path)
    out = tmp_path / "out"
    _run(_stage(), subject, out)
    ((_, reused),) = run_tasks(_stage(), [SubjectTask("s1", subject)], out)
    assert reused
    ((res, reused),) = run_tasks(
        _stage(_settings(spacing=2.0, min_size=16)), [SubjectTask("s1", subject)], out
    )
    assert not reused
    assert max(res.info["cache_shape"]) < 25  # 2 mm voxels: about half of the 40-voxel blob


def test_qc_settings_are_not_part_of_the_result_key(tmp_path: Path):
    """Editing qc.expected_labels (checked by the QC stage) must not recompute any cache."""

    def config(expected):
        return validate_config(
            {
                "subjects": {"dirs": [{"path": "x"}]},
                "cache": {"label_table": str(TABLE), "min_size": 48},
                "qc": {"expected_labels": expected},
            }
        )

    subject = make_subject(tmp_path)
    out = tmp_path / "out"
    ((first, reused),) = run_tasks(
        stage_from_settings(config([2])["cache"]), [SubjectTask("s1", subject)], out
    )
    assert first.status == OK and not reused
    ((_, reused),) = run_tasks(
        stage_from_settings(config([2, 17, 53])["cache"]), [SubjectTask("s1", subject)], out
    )
    assert reused


# --- issue 18: what a bad volume holds, retry after a fix, 4-D volumes, empty atlas ------------


def _gzipped_nifti(path: Path) -> None:
    import nibabel as nib

    image, _ = blob_volumes()
    tmp = path.with_name("tmp.nii.gz")
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp)
    path.write_bytes(tmp.read_bytes())
    tmp.unlink()


def test_non_mgh_bytes_name_the_file_and_what_it_holds(tmp_path: Path):
    """Issue 18, case 3: a renamed .nii.gz gave cache:error:MGHError and gzipped text
    cache:error:KeyError with a bare number; both are volume_unreadable naming the content."""
    import gzip

    nifti = make_subject(tmp_path, "nifti")
    _gzipped_nifti(nifti / "mri" / "brainmask.mgz")
    text = make_subject(tmp_path, "text")
    (text / "mri" / "aparc+aseg.mgz").write_bytes(gzip.compress(b"not a volume\n" * 50))
    out = tmp_path / "out"
    res = _run(_stage(), nifti, out)
    assert (res.status, res.reason) == (FAILED, "volume_unreadable")
    assert res.detail.startswith(
        f"{nifti / 'mri' / 'brainmask.mgz'}: holds gzip-compressed NIfTI-1"
    )
    res = _run(_stage(), text, out)
    assert (res.status, res.reason) == (FAILED, "volume_unreadable")
    assert "aparc+aseg.mgz: holds gzip-compressed text ('not a volume" in res.detail


def test_failed_subject_is_retried_after_its_file_is_fixed(tmp_path: Path):
    """Issue 18, case 3: the fix of a failed subject's volume recomputes it, even a fix that
    keeps the file's size and mtime (the result key's); an unchanged failed subject is reused."""
    import os
    import time

    subject = make_subject(tmp_path)
    target = subject / "mri" / "brainmask.mgz"
    good = target.read_bytes()
    target.write_bytes(b"\0" * len(good))  # the same size, unreadable
    broken = os.stat(target)
    out = tmp_path / "out"
    assert _run(_stage(), subject, out).reason == "volume_unreadable"
    ((_, reused),) = run_tasks(_stage(), [SubjectTask("s1", subject)], out)
    assert reused
    time.sleep(0.01)  # a ctime after the stored failure, on coarse clocks too
    target.write_bytes(good)
    os.utime(target, ns=(broken.st_atime_ns, broken.st_mtime_ns))
    fixed = os.stat(target)
    assert (fixed.st_size, fixed.st_mtime_ns) == (broken.st_size, broken.st_mtime_ns)
    ((res, reused),) = run_tasks(_stage(), [SubjectTask("s1", subject)], out)
    assert not reused and res.status == OK


def test_four_d_volume_reports_its_frames(tmp_path: Path):
    """Issue 18, case 6: a 4-D brainmask passed silently (frame 0 used); QC warns with the frame
    count by default and fails when configured."""
    from damt.qc.checks import volume_issues

    image, labels = blob_volumes()
    subject = make_subject(tmp_path, "s1", np.stack([image, image // 2, image], axis=-1), labels)
    res = _run(_stage(), subject, tmp_path / "out")
    assert res.status == OK
    assert res.info["n_frames"] == {"mri/brainmask.mgz": 3, "mri/aparc+aseg.mgz": 1}
    issues = dict(volume_issues(res.info, qc_settings()))
    assert issues["qc:multiframe"].startswith("mri/brainmask.mgz has 3 frames; only frame 0")
    from damt.qc.severity import status_of

    assert status_of(["qc:multiframe"], {}) == "warn"
    assert status_of(["qc:multiframe"], {"qc:multiframe": "fail"}) == "fail"


def test_all_background_atlas_is_excluded_from_training(tmp_path: Path):
    """Issue 18, case 9: an aparc+aseg of zeros trained by default; qc:empty_atlas fails it."""
    from damt.qc.checks import volume_issues
    from damt.qc.severity import status_of

    image, labels = blob_volumes()
    res = _run(_stage(), make_subject(tmp_path, "s1", image, np.zeros_like(labels)), tmp_path / "o")
    assert res.status == OK and res.info["labels_present"] == []
    codes = [c for c, _ in volume_issues(res.info, qc_settings())]
    assert "qc:empty_atlas" in codes
    assert status_of(codes, {}) == "fail"


def test_a_full_disk_stops_the_job_and_keeps_no_partial_result(bert: Path, small_fs: Path):
    """Issue 30, case 3: the cache of FreeSurfer's bert written to a real, nearly full file
    system (a 1 MB tmpfs): the job stops with the path and the space left named, instead of
    recording the subject as failed, and leaves no result a rerun would take as complete."""
    from damt.errors import DiskFullError

    out = small_fs
    with pytest.raises(DiskFullError, match=r"no space left writing .*MB free") as err:
        _run(_stage(), bert, out)
    assert str(out) in str(err.value)
    assert not stage_dir(out, bert.name, "cache").exists()
    assert not [p for p in out.rglob("*") if p.is_file()], "a partial result was left"
