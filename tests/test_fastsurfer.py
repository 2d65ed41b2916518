"""FastSurfer subjects: recognised per subject, volumes per layout, stats harmonised, end to end.

The subjects are written by the demo generator's FastSurfer layout (no redistributable real
FastSurfer output exists; the layout follows ../shared/data/fastsurfer/README.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from damt.cli import main as damt_main
from damt.config import validate_config
from damt.demo.cohort import generate_cohort
from damt.discovery.workflow import discover_from_config
from damt.downstream import preprocess
from damt.embedding import embedding_inputs
from damt.freesurfer.labels import read_label_table
from damt.freesurfer.stats.long_table import long_table, read_long_metadata
from damt.freesurfer.stats.subject import parse_subject_stats
from damt.results import OK
from damt.stages.cache import CacheSettings, preprocessing_card, stage_from_settings
from damt.stages.registry import build_stage
from damt.stages.stats import StatsStage
from damt.stages.store import SubjectTask, run_tasks
from tests.conftest import QUICK, REPO, discover, write_radiomics_params

CASES = {  # subject id prefix → (FastSurfer version, run)
    "fs23full-": ("2.3.0", "full"),
    "fs21seg-": ("2.1.2", "seg_only"),
    "fs22fail-": ("2.2.0", "failed"),
}
FS_REQUIRED = ["mri/orig_nu.mgz", "mri/aparc.DKTatlas+aseg.deep.mgz"]
# Writing the 256³ volumes of three subjects takes about half a minute.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fs_cohort(tmp_path_factory, bert: Path) -> Path:
    """One subject per FastSurfer case, next to FreeSurfer's bert: a mixed SUBJECTS_DIR."""
    root = tmp_path_factory.mktemp("fastsurfer") / "subjects"
    for i, (prefix, case) in enumerate(CASES.items()):
        generate_cohort(root, 1, seed=i, workers=1, prefix=prefix, fastsurfer=case)
    shutil.copytree(bert, root / "bert")
    return root


def config_for(root: Path) -> dict:
    return validate_config({"subjects": {"dirs": [{"path": str(root)}]}, "outdir": "unused"})


def test_fastsurfer_subjects_recognised_and_failed_run_caught(fs_cohort: Path):
    d = discover_from_config(config_for(fs_cohort))
    by_id = {s.subject_id: s for s in d.subjects}
    assert sorted(by_id) == ["bert", "fs21seg-001", "fs23full-001"]
    assert (by_id["fs23full-001"].segmenter, by_id["fs23full-001"].segmenter_version) == (
        "fastsurfer",
        "2.3.0",
    )
    full, seg = by_id["fs23full-001"], by_id["fs21seg-001"]
    assert (full.fs_version, full.recon_hours) == ("7.4.1", "1.050")
    assert (seg.segmenter_version, seg.recon_hours) == ("2.1.2", "")
    assert by_id["bert"].segmenter == "freesurfer"
    # The trap: recon-all.done says "finished without error" but recon-surf never finished.
    scripts = fs_cohort / "fs22fail-001" / "scripts"
    assert (scripts / "recon-all.done").is_file() and not (scripts / "recon-surf.done").exists()
    assert "finished without error" in (scripts / "recon-all-status.log").read_text()
    failed = next(f for f in d.report if f.subject_id == "fs22fail-001")
    assert (failed.status, failed.reason) == ("flagged", "recon_failed")
    assert "fastsurfer: scripts/recon-surf.log" in failed.detail
    assert "ERROR: mris_make_surfaces failed" in failed.detail


def test_fastsurfer_required_files_per_layout(fs_cohort: Path, tmp_path: Path):
    seg = tmp_path / "s" / "fs-seg"
    shutil.copytree(fs_cohort / "fs21seg-001", seg)
    (seg / "mri" / "orig_nu.mgz").unlink()
    d = discover([{"path": str(seg.parent)}], fastsurfer_required_files=FS_REQUIRED)
    (finding,) = d.report
    assert finding.reason == "missing_required" and "mri/orig_nu.mgz" in finding.detail
    # Without the FastSurfer list, a segmentation-only run lacks FreeSurfer's files.
    d = discover([{"path": str(fs_cohort)}])
    assert "fs21seg-001" not in d.subject_ids


def test_fastsurfer_stats_parsed_and_harmonised(fs_cohort: Path):
    full = parse_subject_stats(fs_cohort / "fs23full-001")
    assert full.file_errors() == {} and full.skipped == []
    kinds = {f.name: f.kind for f in full.files}
    assert kinds["aseg+DKT.stats"] == "aseg+DKT"
    assert kinds["lh.aparc.DKTatlas.mapped.stats"] == "aparc.DKTatlas"
    assert (full.segmenter, full.segmenter_version) == ("fastsurfer", "2.3.0")
    assert (full.fs_version, full.fs_version_source) == ("7.4.1", "stats header")
    deep = next(f for f in full.files if f.kind == "aseg+DKT")
    assert deep.measures == [] and deep.generating_program == "segstats.py"
    assert deep.header["FastSurfer_version"] == "2.3.0"
    assert "ctx-lh-superiorfrontal" in deep.table.structures
    assert "ctx-lh-bankssts" not in deep.table.structures  # DKT has no bankssts
    dkt = next(f for f in full.files if f.name == "lh.aparc.DKTatlas.mapped.stats")
    assert len(dkt.table.structures) == 31

    # Issue 30, case 7: FastSurfer 2.3's aseg.presurf.hypos.stats (segstats.py --empty, with
    # the measures it imports from aseg.stats) is parsed, every one of its values into the long
    # table: all 45 ASegStatsLUT rows (the empty ones as zeros) and all 21 measures.
    hypos = next(f for f in full.files if f.name == "aseg.presurf.hypos.stats")
    assert (hypos.kind, hypos.generating_program) == ("aseg.presurf.hypos", "segstats.py")
    assert len(hypos.table.structures) == 45 and len(hypos.measures) == 21
    text = (fs_cohort / "fs23full-001" / "stats" / "aseg.presurf.hypos.stats").read_text()
    rows = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert len(rows) == 45 and any(row[2] == "0" for row in rows)  # empty structures kept
    written = 21 + sum(len(row) - 1 for row in rows)  # every cell but the structure name
    long = long_table(full)
    in_long = long[long["source_file"] == "aseg.presurf.hypos.stats"]
    assert len(in_long) == written and in_long["value"].notna().all()
    name = next(row[4] for row in rows if row[2] == "0")
    empty = in_long[in_long["structure"] == name].set_index("measure")["value"]
    assert empty["NVoxels"] == 0 and empty["Volume_mm3"] == 0 and empty["normMean"] == 0

    seg = parse_subject_stats(fs_cohort / "fs21seg-001")
    assert [f.name for f in seg.files] == ["aseg+DKT.stats"]
    assert (seg.segmenter_version, seg.fs_version) == ("2.1.2", "")
    assert "FastSurfer_version" not in seg.files[0].header  # v2.3+ only


def test_dkt_atlas_labels_map_onto_the_label_table(fs_cohort: Path):
    import nibabel as nib

    table = read_label_table(REPO / "config" / "labels" / "freesurfer7_aparc+aseg.tsv")
    labels = np.unique(
        np.asarray(nib.load(fs_cohort / "fs21seg-001/mri/aparc.DKTatlas+aseg.deep.mgz").dataobj)
    )
    _, unknown = table.remap(labels)
    assert unknown == {}
    assert not set(labels) & {1001, 1032, 1033, 2001, 2032, 2033, 251, 255}


def test_fastsurfer_subject_end_to_end(fs_cohort: Path, tmp_path: Path):
    """Stats, radiomics and cache of a segmentation-only FastSurfer subject and of bert."""
    config = config_for(fs_cohort)
    out = tmp_path / "out"
    tasks = [SubjectTask(s, fs_cohort / s) for s in ("fs21seg-001", "fs23full-001", "bert")]

    stats = {r.subject_id: r for r, _ in run_tasks(StatsStage(), tasks, out)}
    assert all(r.status == OK for r in stats.values())
    assert stats["fs21seg-001"].info["segmenter"] == "fastsurfer"
    meta = read_long_metadata(out / "subjects" / "fs23full-001" / "stats" / "stats.parquet")
    assert (meta["segmenter"], meta["segmenter_version"]) == ("fastsurfer", "2.3.0")

    cache = stage_from_settings({**config["cache"], **QUICK["cache"]})
    cache.setup()
    results = {r.subject_id: r for r, _ in run_tasks(cache, tasks, out)}
    seg = results["fs21seg-001"]
    assert seg.status == OK, seg.detail
    assert seg.info["cache_unknown_labels"] == {}
    assert set(seg.info["n_frames"]) == {"mri/orig_nu.mgz", "mri/aparc.DKTatlas+aseg.deep.mgz"}
    image = np.load(out / "subjects" / "fs21seg-001" / "cache" / "image.npy")
    atlas = np.load(out / "subjects" / "fs21seg-001" / "cache" / "atlas.npy")
    assert (image[atlas == 0] == 0).mean() > 0.5  # the mask removed orig_nu's head
    assert results["bert"].status == OK
    assert set(results["bert"].info["n_frames"]) == {"mri/brainmask.mgz", "mri/aparc+aseg.mgz"}

    # What a user of the weights reads (issue 26): `damt embed`'s inputs of this SUBJECTS_DIR
    # take each layout's image (and FastSurfer's mask), and preprocess gives the cache's array.
    made = {**config["cache"], **QUICK["cache"]}
    card = {"preprocessing": preprocessing_card(CacheSettings.from_config(made), made)}
    inputs = embedding_inputs(card, [fs_cohort])
    assert sorted(inputs.volumes) == ["bert", "fs21seg-001", "fs23full-001"]
    assert inputs.volumes["fs21seg-001"] == {
        "image": str(fs_cohort / "fs21seg-001" / "mri" / "orig_nu.mgz"),
        "mask": str(fs_cohort / "fs21seg-001" / "mri" / "mask.mgz"),
    }
    assert inputs.volumes["bert"]["mask"] is None
    assert inputs.refused["fs22fail-001"].startswith("recon_failed")
    pipeline = preprocess(card)
    for sid in ("fs21seg-001", "bert"):
        expected = np.load(out / "subjects" / sid / "cache" / "image.npy")
        np.testing.assert_array_equal(pipeline(inputs.volumes[sid])["image"][0].numpy(), expected)

    # Quick (two ROIs at 2 mm), the same in the stage and in `damt radiomics`.
    quick = {**QUICK["radiomics"], "params": str(write_radiomics_params(tmp_path / "r.yaml"))}
    radiomics = build_stage("radiomics", {**config["radiomics"], **quick})
    radiomics.setup()
    rows = {r.subject_id: r for r, _ in run_tasks(radiomics, tasks[:1], out)}
    assert rows["fs21seg-001"].status == OK and rows["fs21seg-001"].info["n_features"] > 0
    # `damt radiomics SUBJECT_DIR` reads the subject's layout as the stage does (a
    # segmentation-only FastSurfer run has no brainmask.mgz): the same row.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(
        {"subjects": {"dirs": [{"path": str(fs_cohort)}]}, "radiomics": quick}, sort_keys=False
    ))  # fmt: skip
    row = tmp_path / "cli" / "fs21seg-001.parquet"
    assert damt_main(["radiomics", str(fs_cohort / "fs21seg-001"), "-o", str(row),
                      "--config", str(cfg)]) == 0  # fmt: skip
    stage_row = out / "subjects" / "fs21seg-001" / "radiomics" / "radiomics.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(row), pd.read_parquet(stage_row))


def test_mixed_cohort_through_the_workflow(fs_cohort: Path, upstream_copy):
    """FastSurfer subjects (complete, segmentation-only, failed) and a running recon join the
    session's FreeSurfer demo subjects in one SUBJECTS_DIR, through the real Snakefile up to
    the manifest."""
    wd, results = upstream_copy, upstream_copy.results
    for case in ("fs23full-001", "fs21seg-001", "fs22fail-001"):
        wd.add_subject(fs_cohort / case)
    busy = wd.own_subject("sub-004") / "scripts" / "IsRunning.lh+rh"
    busy.write_text("recon-all running\n")
    target = str(results / "manifest.parquet")
    wd.snakemake("--cores", "2", "--keep-going", target)

    manifest = pd.read_parquet(target).set_index("subject_id")
    assert sorted(manifest.index) == [
        "fs21seg-001",
        "fs22fail-001",
        "fs23full-001",
        "sub-001",
        "sub-002",
        "sub-003",
        "sub-005",
        "sub-006",
    ]  # sub-004 is still running: not in the manifest
    report = pd.read_csv(results / "discovery" / "report.tsv", sep="\t").set_index("subject_id")
    assert report.loc["sub-004", "reason"] == "recon_running"
    fail = manifest.loc["fs22fail-001"]
    assert fail["status"] == "fail" and list(fail["reasons"]) == ["discovery:recon_failed"]
    for sid, version in (("fs23full-001", "2.3.0"), ("fs21seg-001", "2.1.2")):
        row = manifest.loc[sid]
        assert (row["segmenter"], row["segmenter_version"]) == ("fastsurfer", version)
        assert row["has_cache"] and row["status"] == "warn", row["detail"]
        assert "qc:mixed_segmenters" in row["reasons"]
    assert manifest.loc["fs23full-001", "fs_version"] == "7.4.1"
    assert (manifest.loc["sub-001", "segmenter"], manifest.loc["sub-001", "status"]) == (
        "freesurfer",
        "pass",
    )
    assert (manifest["participant"] == manifest.index).all()
    meta = read_long_metadata(results / "subjects" / "fs21seg-001" / "stats" / "stats.parquet")
    assert meta["segmenter"] == "fastsurfer"
