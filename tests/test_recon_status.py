"""Recon status in discovery: failed and running recons, FreeSurfer version and wall time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from damt.discovery.record import read_discovery, write_discovery
from damt.discovery.scan import discover_subjects
from damt.freesurfer.recon import UNKNOWN, last_error_line, recon_status
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
    d = discover_subjects([{"path": str(tmp_path)}])
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
    assert discover_subjects([{"path": str(tmp_path)}]).subject_ids == ["rerun"]


def test_done_file_that_reports_errors_fails(tmp_path: Path):
    _scripts(
        make_subject(tmp_path, "s"),
        {"recon-all.done": "SUBJECT s\nrecon-all -s s exited with ERRORS at Tue Jul 13 2021\n"},
    )
    f = by_id(discover_subjects([{"path": str(tmp_path)}]))["s"]
    assert (f.status, f.reason) == ("flagged", "recon_failed")
    assert "recon-all.done reports a failure" in f.detail and "exited with ERRORS" in f.detail


def test_running_recon_is_skipped_then_picked_up_when_done(tmp_path: Path, bert: Path):
    folder = make_subject(tmp_path, "busy")
    scripts = _scripts(folder, {"IsRunning.lh+rh": "recon-all running on node17\n"})
    d = discover_subjects([{"path": str(tmp_path)}])
    assert d.subject_ids == []
    f = by_id(d)["busy"]
    assert (f.status, f.reason) == ("skipped", "recon_running")
    assert "IsRunning.lh+rh" in f.detail
    outdir = tmp_path / "out"
    write_discovery(d, outdir)

    (scripts / "IsRunning.lh+rh").unlink()
    shutil.copy(bert / "scripts" / "recon-all.done", scripts / "recon-all.done")
    d = discover_subjects([{"path": str(tmp_path)}])
    assert d.subject_ids == ["busy"]
    write_discovery(d, outdir)
    (subject,) = read_discovery(outdir).subjects
    assert (subject.segmenter, subject.fs_version, subject.recon_hours) == (
        "freesurfer",
        "7.2.0-beta",
        "2.950",
    )


def test_version_from_build_stamp_when_no_done_file(tmp_path: Path):
    _scripts(
        make_subject(tmp_path, "s5"),
        {"build-stamp.txt": "freesurfer-Linux-centos4_x86_64-stable-pub-v5.3.0\n"},
    )
    (subject,) = discover_subjects([{"path": str(tmp_path)}]).subjects
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
