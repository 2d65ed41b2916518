"""The FreeSurfer stats parser: real bert files round trip, version tolerance, bad input."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from damt.cli import main
from damt.errors import SubjectError
from damt.freesurfer.harmonize import classify_stats_file, table_column_name
from damt.freesurfer.recon import build_stamp_version
from damt.freesurfer.stats.long_table import (
    LONG_COLUMNS,
    long_table,
    read_long_metadata,
    read_long_table,
)
from damt.freesurfer.stats.model import StatsParseError
from damt.freesurfer.stats.parser import parse_stats_file, parse_stats_text
from damt.freesurfer.stats.subject import parse_subject_stats
from tests.conftest import unprivileged
from tests.fs_versions import label_stats, make_fs5_subject, make_fs6_subject

BERT_TABLE_FILES = 17  # every stats file of bert but the two free-text ?h.curv.stats


def expected_cells(path: Path) -> list[tuple[str, str, float]]:
    """(structure, measure, value) of every number in a FreeSurfer 7 stats file, read naively."""
    cells = []
    header = None
    for line in path.read_text().splitlines():
        if line.startswith("# Measure "):
            parts = [p.strip() for p in line[len("# Measure ") :].split(",")]
            assert len(parts) == 5, line
            cells.append((parts[0], parts[1], float(parts[3])))
        elif line.startswith("# ColHeaders"):
            header = line.split()[2:]
        elif line.strip() and not line.startswith("#"):
            fields = line.split()
            assert header is not None and len(fields) == len(header)
            struct = fields[header.index("StructName")]
            for col, text in zip(header, fields, strict=True):
                if col != "StructName":
                    cells.append((struct, col, float(text)))
    return cells


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


# --- real data ----------------------------------------------------------------------------------


def test_every_value_of_every_bert_file_round_trips(bert: Path):
    subject = parse_subject_stats(bert)
    assert subject.file_errors() == {}
    assert len(subject.files) == BERT_TABLE_FILES
    assert subject.skipped == ["lh.curv.stats", "rh.curv.stats"]
    long = long_table(subject)
    assert tuple(long.columns) == LONG_COLUMNS
    assert (long["subject_id"] == "bert").all()
    n_checked = 0
    for name, rows in long.groupby("source_file", sort=True):
        expected = expected_cells(bert / "stats" / name)
        got = list(zip(rows["structure_original"], rows["measure"], rows["value"], strict=True))
        assert len(got) == len(expected), name
        for (s, m, v), (es, em, ev) in zip(got, expected, strict=True):
            assert (s, m) == (es, em), name
            assert same(v, ev), f"{name}: {s} {m}: {v!r} != {ev!r}"
        fk = classify_stats_file(name)
        assert (rows["hemisphere"] == fk.hemisphere).all()
        n_checked += len(expected)
    assert n_checked == len(long) > 5000
    # FreeSurfer 7 names are already canonical: nothing renamed.
    assert (long["structure"] == long["structure_original"]).all()


def test_bert_headers_and_units(bert: Path):
    aseg = parse_stats_file(bert / "stats" / "aseg.stats")
    assert aseg.kind == "aseg" and aseg.hemisphere == ""
    assert aseg.generating_program == "mri_segstats"
    assert aseg.cvs_version == aseg.fs_version == "7.2.0-beta"
    assert aseg.subject_name == "bert"
    assert len(aseg.measures) == 20 and len(aseg.table.structures) == 45
    assert dict(zip(aseg.table.columns, aseg.table.units, strict=True))["Volume_mm3"] == "mm^3"
    lh = parse_stats_file(bert / "stats" / "lh.aparc.stats")
    assert (lh.kind, lh.hemisphere) == ("aparc", "lh")
    assert lh.creation_time == "2021/07/13-23:23:42-GMT"
    assert lh.generating_program == "mris_anatomical_stats"
    assert lh.table.units[lh.table.columns.index("ThickAvg")] == "mm"
    # StructName is the row name; "# TableCol  9 ColHeader  FoldInd", "Units      unitless ".
    assert lh.table.columns == (
        "NumVert", "SurfArea", "GrayVol", "ThickAvg", "ThickStd", "MeanCurv", "GausCurv",
        "FoldInd", "CurvInd",
    )  # fmt: skip
    assert lh.table.units[lh.table.columns.index("FoldInd")] == "unitless"
    brainvol = parse_stats_file(bert / "stats" / "brainvol.stats")
    assert brainvol.table is None and len(brainvol.measures) == 16
    wg = parse_stats_file(bert / "stats" / "lh.w-g.pct.stats")
    assert math.isnan(wg.table.values[0][wg.table.columns.index("SNR")])  # "-nan" in the file


def test_freesurfer_version_of_the_build_stamp(bert: Path, tmp_path: Path):
    assert build_stamp_version(bert) == "7.2.0-beta"  # freesurfer-linux-centos7_x86_64-7.2.0-beta-…
    (tmp_path / "scripts").mkdir()
    stamp = tmp_path / "scripts" / "build-stamp.txt"
    stamp.write_text("freesurfer-Linux-centos6_x86_64-stable-pub-v6.0.0-2beba927\n")
    assert build_stamp_version(tmp_path) == "6.0.0"
    stamp.write_text("damt-demo-data-0.1.0 synthetic subject in FreeSurfer 7.4.1 layout\n")
    assert build_stamp_version(tmp_path) == ""  # not FreeSurfer's stamp: no version claimed


def test_long_table_parquet_keeps_header_metadata(bert: Path, tmp_path: Path):
    out = tmp_path / "bert.parquet"
    assert main(["stats", str(bert), "-o", str(out)]) == 0
    frame = read_long_table(out)
    assert frame.equals(long_table(parse_subject_stats(bert)))
    meta = read_long_metadata(out)
    assert meta["fs_version"] == "7.2.0-beta" and meta["skipped"] == [
        "lh.curv.stats",
        "rh.curv.stats",
    ]
    assert meta["files"]["lh.aparc.stats"]["units"]["GrayVol"] == "mm^3"
    assert meta["files"]["aseg.stats"]["generating_program"] == "mri_segstats"
    only = read_long_table(out, source_files=["aseg.stats"])
    assert set(only["source_file"]) == {"aseg.stats"}


def test_cli_writes_tsv_and_names_malformed_file_and_line(bert: Path, tmp_path: Path, capsys):
    subj = tmp_path / "s1"
    shutil.copytree(bert / "stats", subj / "stats")
    bad = subj / "stats" / "lh.aparc.stats"
    bad.chmod(0o644)
    text = bad.read_text().replace(" 2.805 ", " 2.8x5 ")
    bad.write_text(text)
    lineno = next(i for i, line in enumerate(text.splitlines(), 1) if "2.8x5" in line)
    out = tmp_path / "s1.tsv"
    assert main(["stats", str(subj), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:{lineno}: column ThickAvg of bankssts: '2.8x5' is not a number" in err
    assert "Traceback" not in err and not out.exists()
    assert main(["stats", str(subj), "-o", str(out), "--keep-going"]) == 0
    frame = pd.read_csv(out, sep="\t")
    assert "lh.aparc.stats" not in set(frame["source_file"]) and len(frame) > 4000
    assert main(["stats", str(tmp_path / "nope"), "-o", str(out)]) == 2
    assert "stats_missing" in capsys.readouterr().err


# --- version tolerance --------------------------------------------------------------------------


def test_fs6_missing_comma_and_integer_values():
    text = (
        "# Measure Cortex, CortexVol Total cortical gray matter volume, 456213.123, mm^3\n"
        "# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1218061, mm^3  \n"
        "# Measure Cortex, NumVert, Number of Vertices, 125558, unitless\r\n"
    )
    f = parse_stats_text(text, "x/brainvol.stats", "brainvol")
    got = [(m.key, m.name, m.description, m.value, m.unit) for m in f.measures]
    assert got == [
        ("Cortex", "CortexVol", "Total cortical gray matter volume", 456213.123, "mm^3"),
        ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", 1218061.0, "mm^3"),
        ("Cortex", "NumVert", "Number of Vertices", 125558.0, "unitless"),
    ]


def test_fs5_and_fs6_subjects_parse_and_harmonise(bert: Path, tmp_path: Path):
    fs5 = parse_subject_stats(make_fs5_subject(bert, tmp_path / "fs5"))
    fs6 = parse_subject_stats(make_fs6_subject(bert, tmp_path / "fs6"))
    ref = parse_subject_stats(bert)
    assert fs5.file_errors() == fs6.file_errors() == {}
    assert (fs5.fs_version, fs5.fs_version_source) == ("5.3.0", "build-stamp")
    assert (fs6.fs_version, fs6.fs_version_source) == ("6.0.0", "build-stamp")
    by_name = {f.name: f for f in fs5.files}
    assert by_name["lh.aparc.DKTatlas40.stats"].kind == "aparc.DKTatlas"
    assert by_name["lh.BA.stats"].kind == "BA_exvivo"
    aseg5 = by_name["aseg.stats"]
    assert [m.key for m in aseg5.measures][-1] == "EstimatedTotalIntraCranialVol"
    assert (
        aseg5.measures[-1].key_original == "IntraCranialVol" and aseg5.measures[-1].name == "eTIV"
    )
    assert "Left-Thalamus" in aseg5.table.structures
    assert "Left-Thalamus-Proper" in aseg5.table.structures_original
    aseg6 = next(f for f in fs6.files if f.name == "aseg.stats")
    assert len(aseg6.measures) == 22
    cortex = next(m for f in fs6.files if f.name == "lh.aparc.stats" for m in f.measures
                  if m.name == "CortexVol")  # fmt: skip
    assert cortex.value == 487041.964762

    # Every value the older layouts still hold equals bert's, under the canonical names.
    def keyed(subject):
        frame = long_table(subject)
        kinds = {n: classify_stats_file(n).kind for n in frame["source_file"].unique()}
        frame["kind"] = frame["source_file"].map(kinds)
        return frame.set_index(["kind", "hemisphere", "structure", "measure"])["value"]

    ref_values = keyed(ref)
    for subject in (fs5, fs6):
        values = keyed(subject)
        assert values.index.is_unique
        common = values.index.intersection(ref_values.index)
        assert len(common) > 0.9 * len(values)
        a, b = values.loc[common], ref_values.loc[common]
        assert ((a == b) | (a.isna() & b.isna())).all()
    a2009s = long_table(fs6)
    a2009s = a2009s[a2009s["source_file"] == "lh.aparc.a2009s.stats"]
    assert "G_and_S_frontomargin" in set(a2009s["structure"])
    assert "G&S_frontomargin" in set(a2009s["structure_original"])


def test_fs5_label_stats_parsed_generically(bert: Path, tmp_path: Path):
    fs5 = make_fs5_subject(bert, tmp_path / "fs5")
    # Any other mris_anatomical_stats -l file is recognised by its header, whatever its name.
    (fs5 / "stats" / "lh.hippo_custom.stats").write_text(
        label_stats(bert / "stats" / "lh.BA_exvivo.stats", "lh", "perirhinal_exvivo").replace(
            "perirhinal_exvivo.stats", "hippo_custom.stats"
        )
    )
    subject = parse_subject_stats(fs5)
    assert subject.file_errors() == {} and subject.skipped == ["lh.curv.stats", "rh.curv.stats"]
    by_name = {f.name: f for f in subject.files}
    ento = by_name["lh.entorhinal_exvivo.stats"]
    assert (ento.kind, ento.hemisphere) == ("label.entorhinal_exvivo", "lh")
    assert ento.table.structures == ["entorhinal_exvivo"]
    assert ento.table.structures_original == ["./lh.entorhinal_exvivo.label"]
    ref = next(f for f in parse_subject_stats(bert).files if f.name == "lh.BA_exvivo.stats")
    row = ref.table.values[ref.table.structures.index("entorhinal_exvivo")]
    assert ento.table.values == [row]  # bert's real numbers, e.g. GrayVol 1475
    assert by_name["rh.entorhinal_exvivo.stats"].kind == "label.entorhinal_exvivo"
    assert by_name["lh.hippo_custom.stats"].kind == "label.hippo_custom"
    assert by_name["lh.hippo_custom.stats"].table.structures == ["hippo_custom"]
    frame = long_table(subject)
    gray = frame[(frame.source_file == "lh.entorhinal_exvivo.stats") & (frame.measure == "GrayVol")]
    assert gray["value"].tolist() == [1475.0]
    assert table_column_name("label.entorhinal_exvivo", "lh", "entorhinal_exvivo", "GrayVol") == (
        "lh_entorhinal_exvivo_volume"
    )


def test_fs5_names_a2005s_and_ba_are_kept(bert: Path, tmp_path: Path):
    subj = tmp_path / "s" / "stats"
    subj.mkdir(parents=True)
    shutil.copy(bert / "stats" / "lh.aparc.a2009s.stats", subj / "lh.aparc.a2005s.stats")
    shutil.copy(bert / "stats" / "lh.BA_exvivo.stats", subj / "lh.BA.stats")
    kinds = {f.name: f.kind for f in parse_subject_stats(subj.parent).files}
    assert kinds == {"lh.aparc.a2005s.stats": "aparc.a2005s", "lh.BA.stats": "BA_exvivo"}


def test_freesurfer_version_from_old_headers_without_build_stamp(bert: Path, tmp_path: Path):
    fs5 = make_fs5_subject(bert, tmp_path / "fs5")
    fs6 = make_fs6_subject(bert, tmp_path / "fs6")
    for subject in (fs5, fs6):
        (subject / "scripts" / "build-stamp.txt").unlink()
    got5, got6 = parse_subject_stats(fs5), parse_subject_stats(fs6)
    # 5.x: the latest RCS date of its programs is mri_segstats' 2013/02/16 (before 5.3's release).
    assert (got5.fs_version, got5.fs_version_source) == ("5.x", "cvs_version date 2013/02/16")
    assert (got6.fs_version, got6.fs_version_source) == ("6.0", "cvs_version date 2016/05/31")
    # recon-all.done's VERSION, where it names a release, comes before the header dates.
    done = (bert / "scripts" / "recon-all.done").read_text()
    (fs6 / "scripts" / "recon-all.done").write_text(done.replace("7.2.0-beta", "6.0.1", 1))
    got6 = parse_subject_stats(fs6)
    assert (got6.fs_version, got6.fs_version_source) == ("6.0.1", "recon-all.done")


def test_partial_rerun_prefers_the_freesurfer7_file_name(bert: Path, tmp_path: Path):
    subj = tmp_path / "s"
    (subj / "stats").mkdir(parents=True)
    shutil.copy(bert / "stats" / "lh.aparc.DKTatlas.stats", subj / "stats")
    shutil.copy(
        bert / "stats" / "lh.aparc.DKTatlas.stats", subj / "stats" / "lh.aparc.DKTatlas40.stats"
    )
    subject = parse_subject_stats(subj)
    assert [f.name for f in subject.files] == ["lh.aparc.DKTatlas.stats"]
    assert subject.skipped == ["lh.aparc.DKTatlas40.stats"]


# --- bad input, each with the file and line in the message --------------------------------------


@pytest.fixture(scope="module")
def aparc_text(bert: Path) -> str:
    return (bert / "stats" / "lh.aparc.stats").read_text()


@pytest.fixture(scope="module")
def aseg_text(bert: Path) -> str:
    return (bert / "stats" / "aseg.stats").read_text()


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def parse_error(text: str, kind: str = "aparc", path: str = "s/stats/lh.aparc.stats") -> str:
    with pytest.raises(StatsParseError) as info:
        parse_stats_text(text, path, kind, "lh" if kind != "aseg" else "")
    return str(info.value)


def test_empty_file():
    assert parse_error("") == "s/stats/lh.aparc.stats:1: empty file"
    assert parse_error("  \n\n") == "s/stats/lh.aparc.stats:1: empty file"


def test_truncated_file_mid_row(aparc_text: str):
    cut = aparc_text[: aparc_text.index("0.451") + 3]  # "... 2.805 0.4"
    n = cut.count("\n") + 1
    assert parse_error(cut) == (
        f"s/stats/lh.aparc.stats:{n}: last line has no line end: the file is truncated"
    )


def test_truncated_file_in_the_header(aseg_text: str):
    cut = aseg_text[: aseg_text.index("# SegVolFile")]
    n = cut.count("\n")
    msg = parse_error(cut, "aseg", "s/stats/aseg.stats")
    assert msg == (
        f"s/stats/aseg.stats:{n}: no '# ColHeaders' line: the table is missing (truncated file?)"
    )


def test_truncated_file_between_rows(aseg_text: str):
    lines = aseg_text.splitlines(keepends=True)
    cut = "".join(lines[:-10])
    msg = parse_error(cut, "aseg", "s/stats/aseg.stats")
    assert msg.endswith(
        f"the table has 35 rows but '# NRows' (line {line_of(aseg_text, '# NRows')}) says 45: "
        "the file is truncated"
    )
    assert msg.startswith(f"s/stats/aseg.stats:{len(lines) - 10}: ")


def test_truncated_after_colheaders(aparc_text: str):
    cut = aparc_text[: aparc_text.index("bankssts")]
    n = line_of(aparc_text, "# ColHeaders")
    assert parse_error(cut) == (
        f"s/stats/lh.aparc.stats:{n}: '# ColHeaders' is followed by no row: the file is truncated"
    )


def test_missing_colheaders(aparc_text: str):
    n = line_of(aparc_text, "# ColHeaders")
    text = "\n".join(line for line in aparc_text.splitlines() if not line.startswith("# ColHead"))
    msg = parse_error(text + "\n")
    assert msg == (
        f"s/stats/lh.aparc.stats:{n}: data row before any '# ColHeaders' line "
        f"(the table is announced at line {line_of(aparc_text, '# NTableCols')})"
    )


@pytest.mark.parametrize(("change", "count"), [(" ", 9), (" 0.451 7 ", 11)])
def test_row_with_fewer_or_more_fields(aparc_text: str, change: str, count: int):
    text = aparc_text.replace(" 0.451 ", change, 1)
    n = line_of(aparc_text, "bankssts ")
    h = line_of(aparc_text, "# ColHeaders")
    assert parse_error(text) == (
        f"s/stats/lh.aparc.stats:{n}: row has {count} fields but '# ColHeaders' (line {h}) names 10"
    )


def test_non_numeric_value(aseg_text: str):
    text = aseg_text.replace(" 4422.1 ", " 44z2.1 ")
    n = line_of(aseg_text, "Left-Hippocampus")
    assert parse_error(text, "aseg", "a.stats") == (
        f"a.stats:{n}: column Volume_mm3 of Left-Hippocampus: '44z2.1' is not a number"
    )
    measure = aseg_text.replace("1218061.000000", "1218O61.0")
    assert parse_error(measure, "aseg", "a.stats") == (
        f"a.stats:{line_of(aseg_text, 'BrainSegVol,')}: measure BrainSegVol: '1218O61.0' is not "
        "a number"
    )


def test_duplicate_structure_rows(aparc_text: str):
    row = next(line for line in aparc_text.splitlines() if line.startswith("cuneus"))
    text = aparc_text + row + "\n"
    n = len(aparc_text.splitlines()) + 1
    assert parse_error(text) == (
        f"s/stats/lh.aparc.stats:{n}: duplicate structure cuneus "
        f"(first at line {line_of(aparc_text, 'cuneus ')})"
    )


def test_duplicate_rows_after_renaming(aseg_text: str):
    # A file holding both spellings would give two columns of one structure.
    row = next(line for line in aseg_text.splitlines() if " Left-Thalamus " in line)
    text = (
        aseg_text.replace("45 \n", "46 \n", 1)
        + row.replace("Left-Thalamus", "Left-Thalamus-Proper")
        + "\n"
    )
    msg = parse_error(text, "aseg", "a.stats")
    assert "duplicate structure Left-Thalamus (Left-Thalamus-Proper after renaming)" in msg


def test_bad_measure_line_and_duplicate_measure(aseg_text: str):
    bad = aseg_text.replace(", 1218061.000000, mm^3", "")
    n = line_of(aseg_text, "BrainSegVol,")
    assert parse_error(bad, "aseg", "a.stats") == (
        f"a.stats:{n}: '# Measure' line has 3 comma-separated fields, expected 5 "
        "(key, name, description, value, unit)"
    )
    line = next(x for x in aseg_text.splitlines() if "BrainSegVol," in x)
    dup = aseg_text.replace(line, line + "\n" + line, 1)
    assert parse_error(dup, "aseg", "a.stats") == (
        f"a.stats:{n + 1}: duplicate '# Measure' BrainSegVol (first at line {n})"
    )


def test_binary_garbage_and_comment_only_files():
    assert parse_error("# a\n\x00\x00\x00\n", "") == (
        "s/stats/lh.aparc.stats:2: binary data (NUL bytes): the file is corrupt"
    )
    assert parse_error("#\n#\n", "") == (
        "s/stats/lh.aparc.stats:2: no header, '# Measure' line or table: "
        "not a FreeSurfer stats file"
    )


def test_missing_stats_folder(fsaverage: Path, tmp_path: Path):
    with pytest.raises(SubjectError) as info:
        parse_subject_stats(fsaverage)
    assert info.value.reason == "stats_missing"
    assert str(fsaverage / "stats") in info.value.detail
    (tmp_path / "s" / "stats").parent.mkdir()
    (tmp_path / "s" / "stats").write_text("not a folder")
    with pytest.raises(SubjectError, match="not a folder"):
        parse_subject_stats(tmp_path / "s")


# --- unreadable files: for real, as an unprivileged user -------------------------------------


def _subject(root: Path, bert: Path, names: list[str]) -> Path:
    subj = root / "s1"
    (subj / "stats").mkdir(parents=True)
    for name in names:
        shutil.copy(bert / "stats" / name, subj / "stats" / name)
        (subj / "stats" / name).chmod(0o644)
    for d in (subj, subj / "stats"):
        d.chmod(0o755)
    return subj


def test_unreadable_file_is_reported_and_the_others_parse(bert: Path, open_tmp: Path):
    subj = _subject(open_tmp, bert, ["aseg.stats", "lh.aparc.stats"])
    locked = subj / "stats" / "lh.aparc.stats"
    locked.chmod(0)
    out = open_tmp / "s1.tsv"
    cmd = [sys.executable, "-m", "damt", "stats", str(subj), "-o", str(out)]
    proc = unprivileged(cmd, open_tmp)
    assert proc.returncode == 1, proc.stderr
    assert f"damt stats: error: {locked}: cannot read the file: Permission denied" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = unprivileged([*cmd, "--keep-going"], open_tmp)
    assert proc.returncode == 0, proc.stderr
    assert set(pd.read_csv(out, sep="\t")["source_file"]) == {"aseg.stats"}


def test_unreadable_stats_fail_the_subject_with_a_reason(bert: Path, open_tmp: Path):
    subj = _subject(open_tmp, bert, ["aseg.stats"])
    (subj / "stats" / "aseg.stats").chmod(0)
    locked_dir = _subject(open_tmp / "b", bert, ["aseg.stats"])
    (locked_dir / "stats").chmod(0)
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from damt.stages.stats import StatsStage\n"
        "from damt.stages.store import SubjectTask, SubjectError\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        StatsStage().compute(SubjectTask('s1', Path(p)), Path('.'))\n"
        "    except SubjectError as e:\n"
        "        out[p] = [e.reason, e.detail]\n"
        "print(json.dumps(out))\n"
    )
    proc = unprivileged([sys.executable, "-c", code, str(subj), str(locked_dir)], open_tmp)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got[str(subj)][0] == "stats_unreadable"
    assert "aseg.stats: cannot read the file: Permission denied" in got[str(subj)][1]
    assert got[str(locked_dir)] == [
        "stats_unreadable",
        f"{locked_dir / 'stats'} cannot be listed: Permission denied",
    ]
