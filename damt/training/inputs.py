"""What the trainer reads: the manifest, the label table and the normalised feature tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from damt.features import FEATURE_GROUPS, TASK_FEATURE_GROUPS
from damt.paths import normalized_table_file
from damt.training.data import TrainingData, load_training_data


@dataclass
class TrainInputs:
    """Files the trainer reads (docs/contracts.md); tables of switched-off tasks may be None."""

    manifest: Path
    label_table: Path
    tables: dict[str, Path | None] = field(default_factory=dict)

    @classmethod
    def from_arguments(
        cls,
        manifest: str | Path,
        label_table: str | Path,
        tables_dir: str | Path | None,
        explicit: dict[str, str | Path | None],
    ) -> TrainInputs:
        """``damt train``'s inputs: a table given explicitly, else its file in ``tables_dir``."""
        tables: dict[str, Path | None] = {}
        for group in FEATURE_GROUPS:
            if explicit.get(group):
                tables[group] = Path(explicit[group])
            elif tables_dir:
                tables[group] = Path(tables_dir) / normalized_table_file(group)
        return cls(Path(manifest), Path(label_table), tables)

    def load(
        self, tasks: tuple[str, ...], subjects: int | None = None, holdout: bool = False
    ) -> TrainingData:
        """Read the manifest, the label table and the tables the switched-on tasks need;
        ``subjects``: train on that data-scaling subset (``pretrain.subset_size``);
        ``holdout``: the held-out evaluation subjects instead."""
        needed = {
            group: task
            for task, groups in TASK_FEATURE_GROUPS.items()
            if task in tasks
            for group in groups
        }
        for group, task in needed.items():
            path = self.tables.get(group)
            if path is None or not Path(path).is_file():
                raise ValueError(
                    f"the {task} task is on but the {group} table is missing ({path}); pass it "
                    f"or switch the task off (pretrain.tasks.{task}: false)"
                )
        return load_training_data(
            self.manifest,
            self.label_table,
            {group: self.tables[group] for group in needed},
            subjects=subjects,
            holdout=holdout,
        )
