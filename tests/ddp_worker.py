"""Run by ``torchrun`` in the DDP tests: train, then save this rank's parameters."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from damt.config import load_config
from damt.features import FEATURE_GROUPS
from damt.paths import normalized_table_file
from damt.training.inputs import TrainInputs
from damt.training.run import run_pretraining


def main(config: str, data_root: str, out: str) -> None:
    root = Path(data_root)
    tables = {k: root / "features" / normalized_table_file(k) for k in FEATURE_GROUPS}
    inputs = TrainInputs(root / "manifest.parquet", root / "labels.tsv", tables)
    result = run_pretraining(load_config(config), inputs, Path(out) / "run")
    state = {k: v.detach().contiguous() for k, v in result.objective.state_dict().items()}
    save_file(state, str(Path(out) / f"rank{os.environ['RANK']}.safetensors"))
    torch.save(result.last_record, Path(out) / f"record{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
