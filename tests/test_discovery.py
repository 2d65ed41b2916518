"""Subject discovery: ids, required files, templates, lists, links, shards, change tracking."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from damt.discovery.ids import (
    DiscoveryError,
    is_valid_subject_id,
    read_participants,
    read_subjects_list,
    shard_of,
)
from damt.discovery.record import read_discovery, read_shard, write_discovery
from damt.paths import ResultPaths
from tests.conftest import discover, unprivileged

REQUIRED = ("mri/brainmask.mgz", "mri/aparc+aseg.mgz")


def make_subject(root: Path, name: str, files=REQUIRED) -> Path:
    folder = root / name
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def by_id(discovery):
    return {f.subject_id: f for f in discovery.report}


@pytest.mark.parametrize("name", ["bert", "sub-01", "sub_01.long", "A", "0001", "x.y-z_1"])
def test_valid_ids(name):
    assert is_valid_subject_id(name)


@pytest.mark.parametrize("name", [".hidden", "sub 01", "sub/01", "é", "sub:1", "", "a\tb"])
def test_invalid_ids(name):
    assert not is_valid_subject_id(name)


def test_basic_discovery_sorted_with_report(tmp_path: Path):
    for name in ("s2", "s1"):
        make_subject(tmp_path, name)
    (tmp_path / "README").write_text("not a subject")
    d = discover([{"path": str(tmp_path)}])
    assert d.subject_ids == ["s1", "s2"]
    assert {f.status for f in d.report} == {"included"}
    assert d.subjects[0].path == str(tmp_path / "s1")
    assert d.subjects[0].shard == "s1"


def test_illegal_id_is_refused_with_folder_named(tmp_path: Path, caplog):
    make_subject(tmp_path, "good")
    make_subject(tmp_path, "bad id")
    make_subject(tmp_path, ".hidden")
    d = discover([{"path": str(tmp_path)}])
    assert d.subject_ids == ["good"]
    rep = by_id(d)
    assert rep["bad id"].reason == "illegal_id" and rep["bad id"].status == "flagged"
    assert str(tmp_path / "bad id") in rep["bad id"].folder
    assert "bad id" in rep["bad id"].detail and "not a valid subject id" in rep["bad id"].detail
    assert rep[".hidden"].reason == "illegal_id"
    assert "bad id" in caplog.text


def test_missing_required_volume_and_empty_folder_are_reported(tmp_path: Path):
    make_subject(tmp_path, "full")
    make_subject(tmp_path, "half", files=("mri/brainmask.mgz",))
    (tmp_path / "empty").mkdir()
    d = discover([{"path": str(tmp_path)}])
    assert d.subject_ids == ["full"]
    rep = by_id(d)
    assert rep["half"].reason == "missing_required"
    assert "mri/aparc+aseg.mgz" in rep["half"].detail
    assert "mri/brainmask.mgz" not in rep["half"].detail
    assert rep["empty"].reason == "missing_required"
    assert "mri/brainmask.mgz, mri/aparc+aseg.mgz" in rep["empty"].detail


def test_required_file_names_are_configurable(tmp_path: Path):
    make_subject(tmp_path, "a", files=("mri/T1.mgz",))
    d = discover([{"path": str(tmp_path)}], required_files=["mri/T1.mgz"])
    assert d.subject_ids == ["a"]


def test_symlinked_subject_is_followed_and_broken_link_flagged(tmp_path: Path):
    real = make_subject(tmp_path / "elsewhere", "real")
    root = tmp_path / "subjects"
    root.mkdir()
    os.symlink(real, root / "linked")
    os.symlink(tmp_path / "nowhere", root / "dangling")
    d = discover([{"path": str(root)}])
    assert d.subject_ids == ["linked"]
    assert by_id(d)["dangling"].reason == "broken_link"


def test_templates_excluded_by_default_unless_listed(tmp_path: Path):
    make_subject(tmp_path, "fsaverage")
    make_subject(tmp_path, "fsaverage5")
    make_subject(tmp_path, "s1")
    d = discover([{"path": str(tmp_path)}])
    assert d.subject_ids == ["s1"]
    assert by_id(d)["fsaverage"].reason == "excluded_pattern"
    assert by_id(d)["fsaverage"].status == "skipped"
    d = discover([{"path": str(tmp_path)}], subjects_list=["s1", "fsaverage"])
    assert d.subject_ids == ["fsaverage", "s1"]
    assert by_id(d)["fsaverage5"].reason == "not_listed"
    d = discover([{"path": str(tmp_path)}], exclude=[])
    assert d.subject_ids == ["fsaverage", "fsaverage5", "s1"]


def test_subjects_list_restricts_and_reports_absent_subjects(tmp_path: Path):
    for name in ("s1", "s2", "s3"):
        make_subject(tmp_path, name)
    lst = tmp_path.parent / "list.txt"
    lst.write_text("# cohort A\ns3\n\ns1  # trailing comment\nghost\ns1\n")
    ids = read_subjects_list(lst)
    assert ids == ["s3", "s1", "ghost"]
    d = discover([{"path": str(tmp_path)}], subjects_list=ids)
    assert d.subject_ids == ["s1", "s3"]
    rep = by_id(d)
    assert rep["ghost"].reason == "listed_not_found" and rep["ghost"].status == "flagged"
    assert rep["s2"].status == "skipped"


def test_several_dirs_first_wins_duplicates_reported(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_subject(a, "s1")
    make_subject(b, "s1")
    make_subject(b, "s2")
    d = discover([{"path": str(a)}, {"path": str(b)}])
    assert d.subject_ids == ["s1", "s2"]
    assert d.subjects[0].source == str(a)
    dup = [f for f in d.report if f.reason == "duplicate_id"]
    assert len(dup) == 1 and dup[0].folder == str(b / "s1") and str(a / "s1") in dup[0].detail


def test_missing_dir_is_an_error_unless_optional(tmp_path: Path):
    with pytest.raises(DiscoveryError, match="does not exist"):
        discover([{"path": str(tmp_path / "nope")}])
    d = discover([{"path": str(tmp_path / "nope"), "optional": True}])
    assert d.subjects == [] and "does not exist" in d.notices[0]


def test_unreadable_subject_folder_is_flagged(open_tmp: Path):
    """As a user permissions apply to (root ignores them): a locked folder is reported."""
    root = open_tmp / "subjects"
    make_subject(root, "ok")
    locked = make_subject(root, "locked")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    locked.chmod(0)
    code = (
        "import json; from damt.config import validate_config; "
        "from damt.discovery.workflow import discover_from_config; "
        f"c = validate_config({{'subjects': {{'dirs': [{{'path': {str(root)!r}}}]}}, "
        "'outdir': 'unused'}); d = discover_from_config(c); "
        "print(json.dumps({f.subject_id: [f.status, f.reason, f.detail] for f in d.report}))"
    )
    proc = unprivileged([sys.executable, "-c", code], open_tmp)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"][:2] == ["included", ""]
    assert report["locked"][:2] == ["flagged", "unreadable"]
    assert "Permission denied" in report["locked"][2]


def test_shards_are_stable_hash_buckets():
    assert shard_of("bert", 0) == "bert"
    # crc32 of the id, not Python's per-process hash(): the same bucket in every process.
    assert shard_of("bert", 16) == "shard14"
    assert shard_of("bert", 1000) == "shard862"
    buckets = {shard_of(f"sub-{i:05d}", 64) for i in range(5000)}
    assert len(buckets) == 64  # every bucket used: crc32 spreads ids


def test_write_discovery_touches_only_changed_files(tmp_path: Path):
    root = tmp_path / "subjects"
    for name in ("s1", "s2"):
        make_subject(root, name)
    out = tmp_path / "results"
    d = discover([{"path": str(root)}])
    written = write_discovery(d, out)
    assert len(written) == 4  # subjects, report and two shards
    before = {p: p.stat().st_mtime_ns for p in (out / "discovery").rglob("*.tsv")}
    assert write_discovery(discover([{"path": str(root)}]), out) == []
    assert before == {p: p.stat().st_mtime_ns for p in (out / "discovery").rglob("*.tsv")}

    make_subject(root, "s3")
    written = write_discovery(discover([{"path": str(root)}]), out)
    assert set(written) == {
        out / "discovery" / "subjects.tsv",
        out / "discovery" / "report.tsv",
        Path(ResultPaths(str(out)).shard_members("s3")),
    }
    loaded = read_discovery(out)
    assert loaded.subject_ids == ["s1", "s2", "s3"]
    assert read_shard(Path(ResultPaths(str(out)).shard_members("s3")))[0]["subject_id"] == "s3"

    (root / "s1" / "mri" / "brainmask.mgz").unlink()
    write_discovery(discover([{"path": str(root)}]), out)
    assert not Path(
        ResultPaths(str(out)).shard_members("s1")
    ).exists()  # a removed subject's shard disappears


def test_changed_volume_changes_the_fingerprint(tmp_path: Path):
    make_subject(tmp_path, "s1")
    first = discover([{"path": str(tmp_path)}]).subjects[0].fingerprint
    target = tmp_path / "s1" / "mri" / "aparc+aseg.mgz"
    target.write_bytes(b"changed")
    second = discover([{"path": str(tmp_path)}]).subjects[0].fingerprint
    assert first != second


def test_real_subjects_dir(shared_subjects: Path):
    d = discover([{"path": str(shared_subjects)}])
    assert d.subject_ids == ["bert"]
    assert by_id(d)["fsaverage"].reason == "excluded_pattern"
    d = discover([{"path": str(shared_subjects)}], exclude=[])
    assert d.subject_ids == ["bert", "fsaverage"]


@pytest.mark.parametrize("marker", ["stats", "scripts/recon-all.done"])
def test_symlink_loop_marker_flags_only_that_subject(tmp_path: Path, marker: str):
    """Issue 18, case 2: a link loop raised OSError (ELOOP) and stopped discovery."""
    make_subject(tmp_path, "good")
    bad = make_subject(tmp_path, "loop")
    (bad / marker).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(bad / marker, bad / marker)  # points at itself
    d = discover([{"path": str(tmp_path)}])
    assert d.subject_ids == ["good"]
    f = by_id(d)["loop"]
    assert (f.status, f.reason) == ("flagged", "unreadable")
    assert str(bad / marker) in f.detail and "symbolic links" in f.detail


def test_fixed_input_with_kept_mtime_changes_the_fingerprint(tmp_path: Path):
    """Issue 18, case 3: a subject whose volume was replaced must be recomputed, even when the
    replacement keeps size and mtime (``cp -p``); stage inputs beyond the required files count."""
    folder = make_subject(tmp_path, "s1", files=(*REQUIRED, "mri/T1.mgz"))
    first = discover([{"path": str(tmp_path)}], input_files=["mri/T1.mgz"])
    st = os.stat(folder / "mri/T1.mgz")
    (folder / "mri/T1.mgz").write_bytes(b"y")  # same size
    os.utime(folder / "mri/T1.mgz", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    second = discover([{"path": str(tmp_path)}], input_files=["mri/T1.mgz"])
    assert first.subjects[0].fingerprint != second.subjects[0].fingerprint


@pytest.mark.slow
def test_dry_run_goes_on_past_a_link_loop_subject(tmp_path: Path, demo_copy: Path):
    """Issue 18, case 2: a link-loop `stats` of one subject made `snakemake -n` fail for all."""
    from tests.conftest import run_snakemake, workflow_config

    bad = demo_copy / "sub-001" / "stats"
    shutil.rmtree(bad)
    os.symlink(bad, bad)
    override = workflow_config(tmp_path, [{"path": str(demo_copy)}])
    run_snakemake("-n", "--configfile", str(override))
    report = (tmp_path / "results" / "discovery" / "report.tsv").read_text()
    row = next(line for line in report.splitlines() if line.startswith("sub-001\t"))
    assert "\tflagged\tunreadable\t" in row and "Too many levels of symbolic links" in row


def test_longitudinal_and_bids_sessions_get_participants(tmp_path: Path):
    for name in ("tp1", "tp2", "base", "tp1.long.base", "tp2.long.base", "s9"):
        make_subject(tmp_path, name)
    for name in ("sub-01_ses-01", "sub-01_ses-02", "sub-02_ses-01"):
        make_subject(tmp_path, name)
    (tmp_path / "base" / "base-tps").write_text("tp1\ntp2\n")
    d = discover([{"path": str(tmp_path)}])
    got = {s.subject_id: s.participant for s in d.subjects}
    assert got == {
        "tp1": "base",
        "tp2": "base",
        "tp1.long.base": "base",
        "tp2.long.base": "base",
        "s9": "s9",
        "sub-01_ses-01": "sub-01",
        "sub-01_ses-02": "sub-01",
        "sub-02_ses-01": "sub-02",
    }
    template = by_id(d)["base"]
    assert (template.status, template.reason) == ("skipped", "longitudinal_template")
    assert "tp1, tp2" in template.detail

    d = discover([{"path": str(tmp_path)}], include_templates=True)
    assert {s.subject_id: s.participant for s in d.subjects}["base"] == "base"
    # A mapping file wins over the names; ids it lacks keep the name's participant.
    mapping = tmp_path.parent / "participants.tsv"
    mapping.write_text("subject_id\tparticipant\ns9\tP9\ntp1\tP1\n")
    d = discover([{"path": str(tmp_path)}], participants=read_participants(mapping))
    got = {s.subject_id: s.participant for s in d.subjects}
    assert (got["s9"], got["tp1"], got["tp2"]) == ("P9", "P1", "base")
    write_discovery(d, tmp_path.parent / "out")
    again = read_discovery(tmp_path.parent / "out").subjects
    assert {s.subject_id: s.participant for s in again} == got


def test_participants_file_without_its_columns_is_refused(tmp_path: Path):
    bad = tmp_path / "p.tsv"
    bad.write_text("id\tperson\ns1\tP1\n")
    with pytest.raises(DiscoveryError, match=r"needs the column\(s\) subject_id, participant"):
        read_participants(bad)
