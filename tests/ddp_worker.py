"""Run by ``torchrun`` in the DDP tests: ``ddp_worker.py DATA_ROOT CONFIG OUT [CONFIG OUT ...]``
trains each run in turn into ``OUT/run``, then saves this rank's state (``OUT/rankR``) and its
last record (``OUT/recordR.pt``).

Several runs share one process group (and one torch + MONAI import per rank): the trainer
leaves the group only after the last run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from unittest import mock

import torch
from safetensors.torch import save_file

from damt.config import load_config
from damt.features import FEATURE_GROUPS
from damt.paths import normalized_table_file
from damt.training import run
from damt.training.inputs import TrainInputs


def main(data_root: str, *runs: str) -> None:
    root = Path(data_root)
    tables = {k: root / "features" / normalized_table_file(k) for k in FEATURE_GROUPS}
    inputs = TrainInputs(root / "manifest.parquet", root / "labels.tsv", tables)
    pairs = list(zip(runs[::2], runs[1::2], strict=True))
    for i, (config, out) in enumerate(pairs):
        last = i == len(pairs) - 1
        with mock.patch.object(run, "shutdown", run.shutdown if last else lambda: None):
            result = run.run_pretraining(load_config(config), inputs, Path(out) / "run")
        state = {k: v.detach().contiguous() for k, v in result.objective.state_dict().items()}
        save_file(state, str(Path(out) / f"rank{os.environ['RANK']}.safetensors"))
        torch.save(result.last_record, Path(out) / f"record{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
