"""The held-out evaluation split: which subjects never pretrain and score the probe.

A subject's side comes from a hash of its *group key* alone: the manifest's ``participant``
column where it has one (so every session of one person lands on the same side), otherwise the
subject id. The hash maps the key to a number in [0, 1); keys below ``holdout_fraction`` are
held out. Nothing about the rest of the cohort enters, so adding or removing subjects never moves
anyone (an incremental run keeps its split). An explicit list (``evaluation.holdout``, subject or
participant ids) replaces the hashed choice.

Data-scaling runs (``pretrain.subset_size``) train on a subset of the training subjects picked the
same way: by a hash of the subject id, so subsets are nested across sizes and stable.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence

import pandas as pd

from damt.manifest import HOLDOUT, KEY, TRAIN

log = logging.getLogger(__name__)

GROUP_COLUMN = "participant"


def unit_hash(key: str) -> float:
    """A stable number in [0, 1) from ``key`` (SHA-256; independent of Python's hash seed)."""
    digest = hashlib.sha256(str(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def group_keys(frame: pd.DataFrame) -> pd.Series:
    """Each row's group key: its ``participant`` where given, else its subject id."""
    ids = frame[KEY].astype(str)
    if GROUP_COLUMN not in frame.columns:
        return ids
    groups = frame[GROUP_COLUMN]
    given = groups.notna() & (groups.astype(str).str.strip() != "")
    return groups.astype(str).where(given, ids)


def assign_split(
    frame: pd.DataFrame, holdout_fraction: float, holdout: Sequence[str] = ()
) -> pd.Series:
    """``train`` or ``holdout`` per row of ``frame`` (columns ``subject_id`` [, ``participant``]).

    With ``holdout`` (ids of subjects or participants), exactly the groups that hold a listed id
    are held out; otherwise a group is held out when ``unit_hash(key) < holdout_fraction``.
    """
    keys = group_keys(frame)
    if holdout:
        listed = set(map(str, holdout))
        hit = frame[KEY].astype(str).isin(listed) | keys.isin(listed)
        held_groups = set(keys[hit])
        unknown = listed - set(frame[KEY].astype(str)) - set(keys)
        if unknown:
            log.warning(
                "evaluation.holdout names %d id(s) not in the cohort: %s",
                len(unknown),
                ", ".join(sorted(unknown)[:10]),
            )
        held = keys.isin(held_groups)
    else:
        held = keys.map(unit_hash) < holdout_fraction
    return pd.Series([HOLDOUT if h else TRAIN for h in held], index=frame.index, name="split")


def split_from_config(frame: pd.DataFrame, evaluation: Mapping) -> pd.Series:
    """:func:`assign_split` with the config's ``evaluation`` section; logs the sizes."""
    split = assign_split(frame, evaluation["holdout_fraction"], evaluation["holdout"])
    counts = split.value_counts().to_dict()
    log.info(
        "evaluation split (%s): %d train, %d held out",
        "explicit list" if evaluation["holdout"] else f"hash < {evaluation['holdout_fraction']}",
        counts.get(TRAIN, 0),
        counts.get(HOLDOUT, 0),
    )
    return split


def scaling_subset(training_ids: Sequence[str], size: int | None) -> list[str]:
    """The ``size`` training subjects with the smallest (salted) subject-id hash, sorted; all of
    them when ``size`` is None.

    A smaller subset lies inside every larger one, and adding subjects changes a subset only by
    the newcomers that hash into it. The hash is salted so that the subset is independent of the
    held-out split, which hashes the same ids.
    """
    ids = sorted(set(map(str, training_ids)))
    if size is None:
        return ids
    if size < 1:
        raise ValueError(f"pretrain.subset_size is {size}: a data-scaling subset needs at least 1")
    if size > len(ids):
        raise ValueError(
            f"pretrain.subset_size is {size} but only {len(ids)} subjects train (pass/warn, with a "
            "cache, not held out): lower it or remove the run"
        )
    return sorted(sorted(ids, key=lambda s: unit_hash(f"data-scaling:{s}"))[:size])
