"""The held-out split: stable under new subjects, per participant, and never pretrained on."""

from __future__ import annotations

import pandas as pd
import pytest

from damt.features import FEATURE_GROUPS
from damt.manifest import HOLDOUT, TRAIN
from damt.paths import normalized_table_file
from damt.split import assign_split, unit_hash
from damt.training.data import PretrainDataset, load_training_data
from damt.training.launch.signature import training_subjects
from tests.test_training_data import VIEWS
from tests.training_data import write_training_set


def ids(n, start=0):
    return [f"sub-{i:04d}" for i in range(start, start + n)]


def test_the_split_is_stable_when_subjects_are_added():
    first = pd.DataFrame({"subject_id": ids(500)})
    more = pd.DataFrame({"subject_id": ids(500) + ids(1500, start=500)})
    before = assign_split(first, 0.2)
    after = assign_split(more, 0.2)
    assert list(after[:500]) == list(before)  # nobody moved
    assert 0.15 < (after == HOLDOUT).mean() < 0.25
    # Order of the rows does not matter either: the side is a function of the id.
    shuffled = more.sample(frac=1, random_state=0)
    assert dict(zip(shuffled.subject_id, assign_split(shuffled, 0.2), strict=True)) == dict(
        zip(more.subject_id, after, strict=True)
    )
    assert assign_split(first, 0.0).eq(TRAIN).all()
    assert 0 <= unit_hash("sub-0001") < 1 and unit_hash("a") != unit_hash("b")


def test_sessions_of_one_participant_share_a_side():
    rows = [(f"p{p:03d}_ses-{s}", f"p{p:03d}") for p in range(300) for s in (1, 2, 3)]
    frame = pd.DataFrame(rows, columns=["subject_id", "participant"])
    split = assign_split(frame, 0.2)
    sides = split.groupby(frame["participant"]).nunique()
    assert (sides == 1).all()
    assert 0.12 < (split == HOLDOUT).mean() < 0.28
    # The side follows the participant's hash, not the session ids'.
    by_participant = {p: unit_hash(p) < 0.2 for p in frame["participant"]}
    assert all(
        (s == HOLDOUT) == by_participant[p]
        for s, p in zip(split, frame["participant"], strict=True)
    )
    # A row without a participant falls back to its subject id.
    frame.loc[0, "participant"] = None
    alone = assign_split(frame, 0.2)
    assert (alone[0] == HOLDOUT) == (unit_hash(frame.subject_id[0]) < 0.2)


def test_an_explicit_list_replaces_the_hash_and_takes_whole_participants():
    frame = pd.DataFrame(
        {"subject_id": ["a1", "a2", "b1", "c1"], "participant": ["a", "a", "b", "c"]}
    )
    split = assign_split(frame, 0.9, holdout=["a2", "c", "nobody"])
    assert list(split) == [HOLDOUT, HOLDOUT, TRAIN, HOLDOUT]


@pytest.mark.parametrize("column", [False, True])
def test_no_held_out_subject_reaches_the_training_data(tmp_path, column):
    files = write_training_set(tmp_path / "set", n_subjects=6)
    manifest = pd.read_parquet(files.manifest)
    held = files.subjects[1:3]
    manifest["split"] = [HOLDOUT if s in held else TRAIN for s in manifest["subject_id"]]
    if column:  # two sessions of one person: holding out one holds out both
        manifest["participant"] = manifest["subject_id"]
        manifest.loc[manifest["subject_id"] == files.subjects[3], "participant"] = held[0]
        manifest["split"] = assign_split(manifest, 0.0, holdout=[held[0], held[1]])
        held = [*held, files.subjects[3]]
    path = files.root / "manifest_split.parquet"  # beside the cache it points to
    manifest.to_parquet(path)
    tables = {g: files.tables_dir / normalized_table_file(g) for g in FEATURE_GROUPS}
    data = load_training_data(files.manifest, files.label_table, tables)
    assert set(held) <= set(data.subjects)  # the original manifest has no split: all train
    data = load_training_data(path, files.label_table, tables)
    assert not set(held) & set(data.subjects)
    assert data.subjects == [s for s in files.subjects if s not in held]
    assert not set(held) & set(training_subjects(path))
    dataset = PretrainDataset(data, VIEWS, seed=0)
    seen = {data.subjects[int(dataset[i]["index"])] for i in range(len(dataset))}
    assert not seen & set(held)
    assert data.summary["evaluation_split"]["held_out_subjects"] == len(held)
