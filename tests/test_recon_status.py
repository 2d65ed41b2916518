"""Recon status in discovery: failed and running recons, FreeSurfer version and wall time."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from damt.discovery.record import read_discovery, write_discovery
from damt.freesurfer.recon import UNKNOWN, last_error_line, recon_status
from tests.conftest import discover
from tests.test_discovery import by_id, make_subject

FAILED_LOG_TAIL = """\
#@# CA Reg Tue Jul 13 16:47:25 EDT 2021
mri_ca_register -align-after -nobigventricles -mask brainmask.mgz norm.mgz talairach.m3z
rms error = 0.412 at iteration 12
ERROR: mri_ca_register: could not allocate 1073741824 bytes
Linux node17 3.10.0-1160.31.1.el7.x86_64 #1 SMP x86_64 GNU/Linux

recon-all -s s_err exited with ERRORS at Tue Jul 13 17:02:11 EDT 2021

To report a problem, see http://surfer.nmr.mgh.harvard.edu/fswiki/BugReporting
"""


def _scripts(folder: Path, files: dict[str, str]) -> Path:
    scripts = folder / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (scripts / name).write_text(text)
    return scripts


def test_recon_all_error_fails_with_the_log_line_that_says_why(tmp_path: Path):
    _scripts(
        make_subject(tmp_path, "s_err"),
        {
            "recon-all.error": "------------------------------\nSUBJECT s_err\n",
            "recon-all.log": FAILED_LOG_TAIL,
        },
    )
    make_subject(tmp_path, "s_ok")
    d = discover([{"path": str(tmp_path)}])
    assert d.subject_ids == ["s_ok"]
    f = by_id(d)["s_err"]
    assert (f.status, f.reason) == ("flagged", "recon_failed")
    assert "scripts/recon-all.error" in f.detail
    assert "ERROR: mri_ca_register: could not allocate 1073741824 bytes" in f.detail


def test_error_older_than_a_later_successful_run_is_ignored(tmp_path: Path, bert: Path):
    folder = make_subject(tmp_path, "rerun")
    scripts = _scripts(folder, {"recon-all.error": "old failure\n"})
    shutil.copy(bert / "scripts" / "recon-all.done", scripts / "recon-all.done")
    old = os.stat(scripts / "recon-all.done").st_mtime_ns - 10**9
    os.utime(scripts / "recon-all.error", ns=(old, old))
    assert discover([{"path": str(tmp_path)}]).subject_ids == ["rerun"]


def test_done_file_that_reports_errors_fails(tmp_path: Path):
    _scripts(
        make_subject(tmp_path, "s"),
        {"recon-all.done": "SUBJECT s\nrecon-all -s s exited with ERRORS at Tue Jul 13 2021\n"},
    )
    f = by_id(discover([{"path": str(tmp_path)}]))["s"]
    assert (f.status, f.reason) == ("flagged", "recon_failed")
    assert "recon-all.done reports a failure" in f.detail and "exited with ERRORS" in f.detail


def test_running_recon_is_skipped_then_picked_up_when_done(tmp_path: Path, bert: Path):
    folder = make_subject(tmp_path, "busy")
    scripts = _scripts(folder, {"IsRunning.lh+rh": "recon-all running on node17\n"})
    d = discover([{"path": str(tmp_path)}])
    assert d.subject_ids == []
    f = by_id(d)["busy"]
    assert (f.status, f.reason) == ("skipped", "recon_running")
    assert "IsRunning.lh+rh" in f.detail
    outdir = tmp_path / "out"
    write_discovery(d, outdir)

    (scripts / "IsRunning.lh+rh").unlink()
    shutil.copy(bert / "scripts" / "recon-all.done", scripts / "recon-all.done")
    d = discover([{"path": str(tmp_path)}])
    assert d.subject_ids == ["busy"]
    write_discovery(d, outdir)
    (subject,) = read_discovery(outdir).subjects
    assert (subject.segmenter, subject.fs_version, subject.recon_hours) == (
        "freesurfer",
        "7.2.0-beta",
        "2.950",
    )


def _age(folder: Path, hours: float) -> None:
    """Set the modification time of ``folder/scripts`` and everything in it ``hours`` back."""
    then = time.time() - hours * 3600
    for path in [*(folder / "scripts").iterdir(), folder / "scripts"]:
        os.utime(path, (then, then))


def test_a_killed_recon_is_flagged_stale_with_the_time_of_its_last_change(tmp_path: Path):
    """Issue 30, case 7: an IsRunning marker (recon-all) or a surface log without an end
    (FastSurfer) that nothing touched for subjects.stale_after_hours is a stale run, flagged
    with the time of the last change; a younger one is still skipped as running."""
    deep = "Version: 2.3.0\nLog file for segmentation FastSurferCNN/run_prediction.py\n"
    killed = {
        "fs_killed": {"IsRunning.lh+rh": "recon-all running on node17\n"},
        "fast_killed": {"deep-seg.log": deep, "recon-surf.log": "mris_sphere ...\n"},
        "fs_busy": {"IsRunning.lh+rh": "recon-all running on node18\n"},
    }
    for name, files in killed.items():
        _scripts(make_subject(tmp_path, name), files)
    _age(tmp_path / "fs_killed", 72.5)
    _age(tmp_path / "fast_killed", 49)
    _age(tmp_path / "fs_busy", 47)
    d = discover([{"path": str(tmp_path)}], stale_after_hours=48)
    found = by_id(d)
    assert d.subject_ids == []
    assert (found["fs_busy"].status, found["fs_busy"].reason) == ("skipped", "recon_running")
    for name, segmenter in (("fs_killed", "freesurfer"), ("fast_killed", "fastsurfer")):
        f = found[name]
        assert (f.status, f.reason) == ("flagged", "recon_stale"), f
        assert f.detail.startswith(f"{segmenter}: "), f.detail
        assert "nothing in scripts/ changed for over 48 hours (subjects.stale_after_hours)" in (
            f.detail
        )
        last = os.stat(tmp_path / name / "scripts").st_mtime
        assert time.strftime("since %Y-%m-%d %H:%M UTC", time.gmtime(last)) in f.detail
    # The report stays the same between discoveries (it is a QC input): no growing age in it.
    again = by_id(discover([{"path": str(tmp_path)}], stale_after_hours=48))
    assert again["fs_killed"].detail == found["fs_killed"].detail
    # Without the setting a marker never goes stale.
    assert by_id(discover([{"path": str(tmp_path)}]))["fs_killed"].reason == ("recon_running")


def test_fastsurfer_before_2_1_is_named_with_the_file_it_lacks(tmp_path: Path):
    """Issue 30, case 7: FastSurfer v1.x and v2.0 write no Version line and no orig_nu.mgz:
    the version comes from the command deep-seg.log echoes, and the missing_required reason
    names it and what to read instead; with those settings the subject is read."""
    header = "Log file for segmentation FastSurferCNN/run_prediction.py\nTue Jan 10 2023\n\n"
    logs = {
        "v1": "Log file for fastsurfercnn eval.py\nMon Sep 19 2022\n\n"
        "python eval.py --in_name t1.nii.gz --out_name mri/aparc.DKTatlas+aseg.deep.mgz\n",
        "v20": header + "python run_prediction.py --t1 t1.nii.gz --aparc_aseg_segfile "
        "mri/aparc.DKTatlas+aseg.deep.mgz --sid v20\n",
        "v21": header + "python run_prediction.py --t1 t1.nii.gz --asegdkt_segfile "
        "mri/aparc.DKTatlas+aseg.deep.mgz --sid v21\n",
    }
    volumes = ["mri/aparc.DKTatlas+aseg.deep.mgz", "mri/nu.mgz"]
    for name, text in logs.items():
        folder = make_subject(tmp_path, name, volumes)
        _scripts(folder, {"deep-seg.log": text, "recon-surf.done": "SUBJECT x\n"})
    assert [recon_status(tmp_path / n).segmenter_version for n in logs] == ["1.x", "2.0", "2.1"]
    found = by_id(
        discover(
            [{"path": str(tmp_path)}],
            fastsurfer_required_files=["mri/orig_nu.mgz", "mri/aparc.DKTatlas+aseg.deep.mgz"],
        )
    )
    for name, version in (("v1", "1.x"), ("v20", "2.0")):
        f = found[name]
        assert (f.status, f.reason) == ("flagged", "missing_required")
        assert f"lacks required file(s): mri/orig_nu.mgz (FastSurfer {version}" in f.detail
        assert "mri/nu.mgz: name it in subjects.fastsurfer_required_files" in f.detail
    # v2.1 writes orig_nu.mgz: a v2.1 folder without it is just missing a file.
    assert found["v21"].detail.endswith("lacks required file(s): mri/orig_nu.mgz")
    d = discover([{"path": str(tmp_path)}], fastsurfer_required_files=volumes)
    assert d.subject_ids == sorted(logs)
    assert [s.segmenter_version for s in d.subjects] == ["1.x", "2.0", "2.1"]


def test_version_from_build_stamp_when_no_done_file(tmp_path: Path):
    _scripts(
        make_subject(tmp_path, "s5"),
        {"build-stamp.txt": "freesurfer-Linux-centos4_x86_64-stable-pub-v5.3.0\n"},
    )
    (subject,) = discover([{"path": str(tmp_path)}]).subjects
    assert (subject.fs_version, subject.recon_hours) == ("5.3.0", "")


def test_real_bert_status(bert: Path):
    status = recon_status(bert)
    assert (status.segmenter, status.state, status.fs_version, status.recon_hours) == (
        "freesurfer",
        "done",
        "7.2.0-beta",
        "2.950",
    )


def test_last_error_line_skips_success_words():
    assert last_error_line("rms error = 0.2\nrecon-all finished without error\n") == ""
    assert last_error_line(FAILED_LOG_TAIL).startswith("ERROR: mri_ca_register")
    traceback = (
        'Traceback (most recent call last):\n  File "x.py"\nRuntimeError: CUDA out of memory\n'
    )
    assert last_error_line(traceback) == "RuntimeError: CUDA out of memory"
    assert recon_status(Path("/nonexistent")).state == UNKNOWN


def test_fastsurfer_status_ignores_recon_all_done(tmp_path: Path, bert: Path):
    """FastSurfer's single-step recon-all calls leave a recon-all.done in failed runs too."""
    done = (bert / "scripts" / "recon-all.done").read_text()
    deep = "Version: 2.3.0\nLog file for segmentation FastSurferCNN/run_prediction.py\n"
    failed = _scripts(
        tmp_path / "failed",
        {
            "deep-seg.log": deep,
            "recon-all.done": done,
            "recon-surf.log": "recon-all -s x finished without error\nERROR: mri_cc failed\n",
        },
    )
    status = recon_status(failed.parent)
    assert (status.segmenter, status.state, status.segmenter_version) == (
        "fastsurfer",
        "failed",
        "2.3.0",
    )
    assert status.detail.endswith("ERROR: mri_cc failed")
    running = _scripts(
        tmp_path / "running",
        {"deep-seg.log": deep, "recon-surf.log": "recon-all -s x finished without error\n"},
    )
    assert recon_status(running.parent).state == "running"
    (running / "recon-surf.done").write_text("SUBJECT x\nRUNTIME_HOURS 1.2\nVERSION $Id$\n")
    status = recon_status(running.parent)
    assert (status.state, status.recon_hours) == ("done", "1.2")
    seg_only = _scripts(tmp_path / "seg", {"deep-seg.log": "Version: 2.1.2\n" + deep})
    assert recon_status(seg_only.parent).segmenter_version == "2.3.0"  # the last invocation
    crashed = _scripts(
        tmp_path / "crashed",
        {"deep-seg.log": deep + "Traceback (most recent call last):\nRuntimeError: CUDA OOM\n"},
    )
    status = recon_status(crashed.parent)
    assert (status.state, status.detail) == (
        "failed",
        "scripts/deep-seg.log reports an error: RuntimeError: CUDA OOM",
    )
