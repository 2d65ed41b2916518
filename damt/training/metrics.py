"""Training metrics: one JSON line per epoch in ``metrics.jsonl`` and TensorBoard event files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from damt.io import write_bytes_atomic

log = logging.getLogger("damt.train")


def read_records(run_dir: str | Path) -> list[dict]:
    """The epoch records of ``metrics.jsonl`` (empty when there is none yet).

    A line that is not a whole record (the last one, cut short by a kill during its write) is
    skipped with a warning naming it; a resume then rewrites the file without it.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            log.warning(
                "%s line %d is not a whole epoch record (cut short by a kill?): skipped: %.80r",
                path, number + 1, line,
            )  # fmt: skip
            continue
        records.append(record)
    return records


class MetricsLog:
    """Writer of ``metrics.jsonl`` and ``tb/``; inactive on ranks other than 0.

    On resume, records of epochs that the checkpoint does not cover (a run killed after logging
    but before checkpointing) are dropped, and TensorBoard purges events past the resumed step.
    """

    def __init__(self, run_dir: str | Path, start_epoch: int, start_step: int, active: bool):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if not active:
            return
        if self.path.exists():
            kept = [r for r in read_records(run_dir) if r["epoch"] < start_epoch]
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
            write_bytes_atomic(self.path, text.encode("utf-8"))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step or None)

    def step(self, step: int, scalars: dict[str, float]) -> None:
        """Per-step scalars (TensorBoard only)."""
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"step/{key}", value, step)

    def epoch(self, record: dict) -> None:
        """Append one epoch's record to ``metrics.jsonl`` and TensorBoard."""
        if self.writer is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
