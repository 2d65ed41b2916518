"""Who a unit trains on: hash-ordered nested subsets of the labelled training subjects, the inner
validation split, and the units of a task.

Subjects are ordered per seed by a hash of ``(seed, subject id)``, so the order of the subjects a
cohort already had does not change when subjects are added, and each count's subset is the first
``count`` of that order: the subsets of a seed nest, and few-label runs are the same protocol at
every cohort size.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence

from damt.finetune.settings import ALL, INITS, FinetuneError, Task, Unit
from damt.probe.settings import listed

log = logging.getLogger(__name__)


def _rank(salt: str, subject: str) -> str:
    return hashlib.sha256(f"{salt}:{subject}".encode()).hexdigest()


def labelled_order(subjects: Sequence[str], seed: int) -> list[str]:
    """``subjects`` in the order of seed ``seed`` (a hash of seed and id: stable as subjects are
    added or removed)."""
    return sorted(subjects, key=lambda s: _rank(f"finetune:{seed}", s))


def labelled_subset(subjects: Sequence[str], count: int | str, seed: int) -> list[str]:
    """The first ``count`` (``all``: every one) of :func:`labelled_order`."""
    order = labelled_order(subjects, seed)
    if count == ALL:
        return order
    if count > len(order):
        raise FinetuneError(f"{count} labelled subjects asked for, {len(order)} there are")
    return order[:count]


def inner_split(subjects: Sequence[str], fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation): ``floor(fraction × n)`` of ``subjects`` validate (early stopping and
    the best epoch), chosen by a hash of seed and id; none below ``1 / fraction`` subjects (then
    the last epoch is kept)."""
    n_val = math.floor(fraction * len(subjects))
    if n_val == 0 or n_val == len(subjects):
        return sorted(subjects), []
    order = sorted(subjects, key=lambda s: _rank(f"validation:{seed}", s))
    return sorted(order[n_val:]), sorted(order[:n_val])


def task_units(
    task: Task, counts: Sequence[int | str], seeds: Sequence[int], n_labelled: int
) -> list[Unit]:
    """Every unit of ``task`` (each init, count and seed); a count above the ``n_labelled``
    training subjects is skipped with a message (``all`` always runs)."""
    too_many = [c for c in counts if c != ALL and c > n_labelled]
    if too_many:
        log.warning(
            "finetune %s: labelled count(s) %s skipped: the task has %d labelled training "
            "subjects", task.name, listed(too_many), n_labelled,
        )  # fmt: skip
    kept = [c for c in counts if c not in too_many]
    # `all` equal to a listed count is the same subset: keep the number.
    if ALL in kept and n_labelled in kept:
        kept.remove(ALL)
    if not kept:
        raise FinetuneError(
            f"finetune {task.name}: no labelled count fits its {n_labelled} labelled training "
            f"subjects (counts {list(counts)})"
        )
    return [Unit(task.name, init, c, s) for c in kept for init in INITS for s in seeds]
