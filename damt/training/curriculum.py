"""The task curriculum (``pretrain.curriculum``): which tasks train in which epoch."""

from __future__ import annotations

from dataclasses import dataclass

from damt.model.spec import TASKS


@dataclass(frozen=True)
class Phase:
    """Epochs up to and including ``until_epoch`` (1-based) train ``tasks`` only."""

    until_epoch: int
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class Curriculum:
    """Phases in order; after the last one (and without any) every switched-on task trains."""

    phases: tuple[Phase, ...]
    tasks: tuple[str, ...]  # the switched-on tasks (pretrain.tasks)

    @classmethod
    def from_config(cls, entries: list[dict], tasks: tuple[str, ...], epochs: int) -> Curriculum:
        """Check and build the phases of ``pretrain.curriculum``; errors name the phase."""
        phases, previous = [], 0
        for number, entry in enumerate(entries, 1):
            where = f"pretrain.curriculum phase {number}"
            until, named = entry["until_epoch"], list(entry["tasks"])
            if not named:
                raise ValueError(f"{where} (until_epoch {until}) names no task")
            unknown = [t for t in named if t not in TASKS]
            if unknown:
                raise ValueError(f"{where}: unknown task(s) {unknown}; known: {list(TASKS)}")
            off = [t for t in named if t not in tasks]
            if off:
                raise ValueError(
                    f"{where}: task(s) {off} are switched off in pretrain.tasks; switch them "
                    "on or leave them out of the phase"
                )
            if until <= previous:
                raise ValueError(
                    f"{where}: until_epoch {until} must be larger than the previous phase's "
                    f"({previous})"
                )
            if until > epochs:
                raise ValueError(
                    f"{where}: until_epoch {until} is beyond pretrain.epochs ({epochs})"
                )
            # The network's task order, whatever order the phase lists them in.
            phases.append(Phase(until, tuple(t for t in tasks if t in named)))
            previous = until
        return cls(tuple(phases), tasks)

    def active(self, epoch: int) -> tuple[str, ...]:
        """Tasks that train in ``epoch`` (0-based, as the training loop counts)."""
        for phase in self.phases:
            if epoch < phase.until_epoch:
                return phase.tasks
        return self.tasks

    def to_dict(self) -> list[dict]:
        """The phases as the model card records them."""
        return [{"until_epoch": p.until_epoch, "tasks": list(p.tasks)} for p in self.phases]
