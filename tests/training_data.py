"""The trainer's tests' configuration; the synthetic training set is
:mod:`damt.demo.training_set` (re-exported here).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from damt.config import load_config, with_schema_defaults
from damt.demo.training_set import write_training_set
from damt.training.settings import TrainSettings
from tests.conftest import subprocess_env

__all__ = [
    "DDP_RUNS",
    "METHODS",
    "TEST_PRESET",
    "Interrupted",
    "kill_at_first_checkpoint",
    "pretrain_config",
    "start_training",
    "train_args",
    "train_in_process",
    "write_config",
    "write_training_set",
]


TEST_PRESET = {
    "embed_dim": 12,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 2, 4, 8],
    "window": 4,
    "patch": 2,
    "global_crop": 64,
    "local_crop": 64,
    "local_crop_source": 40,
    "mim_patch": 16,
    "checkpointing": False,
}


# The contrastive methods besides the default NT-Xent, with the state each keeps.
METHODS = {
    "vicreg": {"contrastive": {"method": "vicreg"}},
    "dino": {"contrastive": {"method": "dino", "export": "teacher"}, "ema": {"enabled": True}},
    "ntxent_queue_ema": {"contrastive": {"queue_size": 6}, "ema": {"enabled": True}},
}
# The runs trained on two gloo ranks, all by one torchrun (conftest.ddp_runs, on 5 subjects):
# run name -> pretrain overrides. `damt`: the default tasks and method; each method for one
# epoch; `phases`: a curriculum's phase change with gradient accumulation.
DDP_RUNS = {
    "damt": {"epochs": 2, "batch_size_per_gpu": 1},
    **{
        name: {"epochs": 1, "warmup_epochs": 0, "batch_size_per_gpu": 1, **method}
        for name, method in METHODS.items()
    },
    "phases": {
        "epochs": 2,
        "batch_size_per_gpu": 1,
        "cpu_processes": 2,
        "accumulate_steps": 2,
        "curriculum": [{"until_epoch": 1, "tasks": ["rotation", "mim"]}],
    },
}


def pretrain_config(**overrides) -> dict:
    """A small CPU pretrain section (tiny preset), merged with ``overrides``."""
    section = {
        "preset": "tiny",
        "presets": {"tiny": dict(TEST_PRESET)},
        "epochs": 2,
        "warmup_epochs": 1,
        "batch_size_per_gpu": 2,
        "base_lr": 0.05,
        "contrastive_dim": 32,
        "num_workers": 0,
        "gpus": 0,
        "deterministic": True,
        "save_every": 1,
        "log_every_steps": 1,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return section


def section_settings(section: dict) -> TrainSettings:
    """A ``pretrain`` section, completed by the schema's defaults, parsed as the launcher and
    the trainer parse it."""
    return TrainSettings.from_section(with_schema_defaults("pretrain", section))


def run_settings(**overrides) -> TrainSettings:
    """:func:`pretrain_config` with ``overrides``, parsed (:func:`section_settings`)."""
    return section_settings(pretrain_config(**overrides))


def write_config(path: Path, **overrides) -> Path:
    """A workflow config file whose `pretrain` section is :func:`pretrain_config`."""
    config = {
        "subjects": {"dirs": [{"path": str(path.parent)}]},
        "pretrain": pretrain_config(**overrides),
    }
    path.write_text(yaml.safe_dump(config))
    load_config(path)  # fail here, not in a subprocess, when the test config is invalid
    return path


def train_args(files, config: Path, out: Path, *extra: str) -> list[str]:
    """``damt train`` arguments for a set written by :func:`write_training_set`."""
    return [
        "train", "--config", str(config), "--manifest", str(files.manifest),
        "--tables-dir", str(files.tables_dir), "--label-table", str(files.label_table),
        "--out", str(out), *extra,
    ]  # fmt: skip


def start_training(files, config: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``python -m damt train`` in a process of its own (stderr piped, as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "damt", *train_args(files, config, out, *extra)],
        env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


class Interrupted(BaseException):
    """Stands in for a kill right after a run's first checkpoint (:func:`train_in_process`);
    a BaseException, so that no handler of the trainer's can take it for an error of its own."""


def train_in_process(files, config: Path, out: Path, interrupt: bool = False):
    """What ``damt train`` does, in this process (no torch and MONAI import to pay again);
    with ``interrupt`` the run stops with :class:`Interrupted` as soon as its first checkpoint
    is on disk. The one real SIGKILL of a trainer is test_training_loop's
    (:func:`kill_at_first_checkpoint`)."""
    from damt.training import loop
    from damt.training.inputs import TrainInputs
    from damt.training.run import CONFIG_SECTIONS, run_pretraining

    config_dict = load_config(config, sections=CONFIG_SECTIONS)
    inputs = TrainInputs.from_arguments(files.manifest, files.label_table, files.tables_dir, {})
    if not interrupt:
        return run_pretraining(config_dict, inputs, out, cores=1)
    save = loop.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise Interrupted

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(loop, "save_checkpoint", save_then_stop)
        run_pretraining(config_dict, inputs, out, cores=1)
    return None


def kill_at_first_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout: float = 600) -> None:
    """SIGKILL a ``damt train`` process as soon as it has written its first checkpoint (it
    must still be running then: a run that finishes first cannot test a resume)."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "checkpoints" / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"no checkpoint after {timeout} s"
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
