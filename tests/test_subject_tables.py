"""Phenotype and participant tables as spreadsheets write them (issue 30, case 5): read, their
ids matched to the subjects where the match is unambiguous (and logged), refused where not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from damt.discovery.ids import DiscoveryError, read_participants
from damt.probe.phenotypes import read_phenotypes
from damt.probe.settings import ProbeError
from damt.subject_tables import SubjectTableError, match_subject_ids, read_subject_table
from tests.conftest import discover
from tests.test_discovery import make_subject


def test_a_spreadsheet_export_reads_like_a_clean_table(tmp_path: Path):
    """A byte-order mark, CRLF line ends, `;` separators, quoted and padded cells, numbers
    padded with spaces: the same frame as the clean TSV."""
    clean = tmp_path / "clean.tsv"
    clean.write_text("subject_id\tage\tsex\nsub-01\t52.5\tF\nsub-02\t61\tM\n")
    messy = tmp_path / "messy.csv"
    messy.write_bytes(
        '\ufeffsubject_id ; age ;sex\r\n"sub-01" ; 52.5 ;" F "\r\n sub-02;61 ; M\r\n'.encode()
    )
    for path in (clean, messy):
        frame = read_subject_table(path)
        assert list(frame.columns) == ["subject_id", "age", "sex"], path
        assert frame["subject_id"].tolist() == ["sub-01", "sub-02"]
        assert frame["age"].tolist() == [52.5, 61.0] and frame["sex"].tolist() == ["F", "M"]


def test_duplicate_or_missing_columns_are_refused(tmp_path: Path):
    doubled = tmp_path / "doubled.tsv"
    doubled.write_text("subject_id\tage\tage\ns1\t50\t51\n")
    with pytest.raises(ProbeError, match=r"column\(s\) 'age' appear more than once"):
        read_phenotypes(doubled)
    no_ids = tmp_path / "no_ids.csv"
    no_ids.write_text("id,age\ns1,50\n")
    with pytest.raises(ProbeError, match=r"needs the column\(s\) subject_id \(found: id, age\)"):
        read_phenotypes(no_ids)


def test_ids_a_spreadsheet_changed_are_matched_and_said(tmp_path: Path, caplog):
    table = tmp_path / "phenotypes.tsv"
    # 50038: 0050038 as a spreadsheet number; sub-12: a prefix the folder lacks; 7: both.
    table.write_text("subject_id\tage\n50038\t40\nsub-12\t50\n7\t60\nsub-07\t61\nx99\t70\n")
    subjects = ["sub-0050038", "12", "sub-07"]
    with caplog.at_level(logging.INFO, logger="damt"):
        frame = read_phenotypes(table, subjects)
    assert frame["subject_id"].tolist() == ["sub-0050038", "12", "sub-07", "sub-07", "x99"]
    assert "3 id(s) matched" in caplog.text and "50038 → sub-0050038" in caplog.text
    # Without the cohort's ids nothing is guessed.
    assert read_phenotypes(table)["subject_id"].tolist()[:3] == ["50038", "sub-12", "7"]


def test_an_id_that_could_mean_two_subjects_is_refused_with_its_line(tmp_path: Path):
    table = tmp_path / "phenotypes.tsv"
    table.write_text("subject_id\tage\nsub-02\t40\n1\t50\n")
    with pytest.raises(ProbeError, match=r"line 3: 1 \(sub-001 or sub-01\)"):
        read_phenotypes(table, ["sub-01", "sub-001", "sub-02"])
    with pytest.raises(SubjectTableError, match=r"1 \(sub-001 or sub-01\)"):
        match_subject_ids(
            read_subject_table(table)["subject_id"], ["sub-01", "sub-001"], "t", first_line=None
        )


def test_a_participants_table_from_a_spreadsheet_names_the_people(tmp_path: Path):
    root = tmp_path / "subjects"
    for name in ("sub-001_ses-1", "sub-001_ses-2", "0042"):
        make_subject(root, name)
    mapping = tmp_path / "participants.csv"
    mapping.write_bytes(
        "\ufeffsubject_id;participant\r\nsub-001_ses-1;P1\r\nsub-001_ses-2;P1\r\n42;P2\r\n".encode()
    )
    participants = read_participants(mapping)
    found = discover([{"path": str(root)}], participants=participants)
    got = {s.subject_id: s.participant for s in found.subjects}
    assert got == {"sub-001_ses-1": "P1", "sub-001_ses-2": "P1", "0042": "P2"}
    make_subject(root, "042")
    with pytest.raises(DiscoveryError, match=r"42 \((0042 or 042|042 or 0042)\)"):
        discover([{"path": str(root)}], participants=participants)
