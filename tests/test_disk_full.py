"""A full disk or quota outside the per-subject stages (issue 30, case 3): a cohort stage's
table, the trainer's checkpoint, a ``damt`` command. Each stops with the path and the space left
named, and keeps what was complete before (real 1 MB file systems: ``small_fs``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from damt.cli import main
from damt.errors import DiskFullError
from damt.freesurfer.stats.long_table import write_long_table
from damt.freesurfer.stats.subject import parse_subject_stats
from damt.logs import rule_log
from damt.training.checkpoint import LATEST, NEXT, Checkpoint, load_checkpoint, save_checkpoint
from tests.conftest import fill


def _checkpoint(epoch: int) -> Checkpoint:
    weights = {"w": torch.full((60_000,), float(epoch))}  # 240 kB
    return Checkpoint(epoch, 10 * epoch, 0, weights, {}, {}, {}, {}, None)


def test_a_cohort_stage_on_a_full_disk_names_the_path_and_the_space_left(
    bert: Path, small_fs: Path, tmp_path: Path
):
    """pyarrow's error names no file and no free space: the rule's log wrapper says both."""
    subject = parse_subject_stats(bert)
    table = small_fs / "tables" / "stats.parquet"
    table.parent.mkdir()
    fill(small_fs, 4_000)
    log = tmp_path / "stats_table.log"
    with pytest.raises(DiskFullError) as err, rule_log(str(log), [str(table)]):
        write_long_table(subject, table)
    assert str(err.value).startswith(
        f"[Errno 28] no space left writing under {table.parent} (0.0 MB free on the file "
    )
    assert "DiskFullError: [Errno 28] no space left" in log.read_text()
    assert not table.exists()


def test_a_full_disk_at_a_checkpoint_keeps_the_one_before(small_fs: Path):
    """torch reports a short write as "unexpected pos N vs M": the trainer's error says the
    disk is full, and the previous epoch's checkpoint stays the one a rerun resumes from."""
    folder = small_fs / "checkpoints"
    save_checkpoint(folder, _checkpoint(1), save_every=0)
    fill(small_fs, 100_000)
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(folder, _checkpoint(2), save_every=0)
    message = str(err.value)
    assert f"no space left writing {folder / NEXT} (0." in message
    assert f"MB free on the file system of {folder})" in message
    assert "the rerun resumes from the newest" in message
    assert sorted(p.name for p in folder.iterdir()) == [LATEST]  # no temporary file left
    resumed = load_checkpoint(folder)
    assert resumed.epoch == 1 and torch.equal(resumed.model["w"], torch.ones(60_000))


def test_a_damt_command_on_a_full_disk_says_so(bert: Path, small_fs: Path, capsys):
    fill(small_fs, 4_000)
    assert main(["stats", str(bert), "-o", str(small_fs / "bert.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"damt stats: error: [Errno 28] no space left writing under {small_fs} (")
    assert "free space or raise the quota, then rerun" in err
