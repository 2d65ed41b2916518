"""The training loop: real optimisation steps, outputs, resume, non-finite steps, checkpoints."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import SwinUNETR
from safetensors.torch import load_file
from torch.utils.data import default_collate

from damt.cli import main as damt_main
from damt.config import load_config
from damt.features import FEATURE_GROUPS
from damt.model import TASKS, load_encoder, pooled_features, read_encoder_spec
from damt.model.network import DAMTNetwork
from damt.paths import normalized_table_file
from damt.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from damt.training.data import PretrainDataset
from damt.training.inputs import TrainInputs
from damt.training.loop import NonFiniteLossError, TrainingStopped
from damt.training.objective import PretrainObjective
from damt.training.process import STOPPED_EXIT, STOPPED_FILE
from damt.training.run import network_spec, run_pretraining
from damt.training.settings import TrainSettings
from damt.training.signals import SIGNALS
from damt.training.step import param_groups, resolve_precision, train_step
from tests.training_data import (
    kill_at_first_checkpoint,
    start_training,
    train_args,
    train_in_process,
    write_config,
    write_training_set,
)

TABLES = FEATURE_GROUPS


def _inputs(files) -> TrainInputs:
    tables = {k: files.tables_dir / normalized_table_file(k) for k in TABLES}
    return TrainInputs(files.manifest, files.label_table, tables)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("train"), n_subjects=4)


@pytest.fixture(scope="module")
def finished_run(files, tmp_path_factory):
    """A two-epoch run through the command line."""
    root = tmp_path_factory.mktemp("run")
    config = write_config(root / "config.yaml")
    assert damt_main(train_args(files, config, root / "run")) == 0
    return root / "run", config


@pytest.mark.slow
def test_a_few_steps_on_a_fixed_batch_lower_the_loss(files):
    config = load_config(write_config(files.root / "fixed.yaml", base_lr=0.5))
    settings = TrainSettings.from_config(config)
    data = _inputs(files).load(settings.tasks)
    torch.manual_seed(0)
    objective = PretrainObjective(DAMTNetwork(network_spec(settings, data)), "uncertainty", 0.5)
    batch = default_collate([PretrainDataset(data, settings.views, 0)[i] for i in range(2)])
    optimizer = torch.optim.AdamW(param_groups(objective), lr=1e-3)
    history = []
    for _ in range(6):
        total, losses, valid, _ = objective(batch)
        assert torch.isfinite(total)
        assert set(losses) == set(TASKS) and all(torch.isfinite(v) for v in losses.values())
        assert all(bool(v) for v in valid.values())
        history.append(sum(float(v) for v in losses.values()))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert history[-1] < 0.9 * history[0], history


def test_three_axis_location_grid_gives_27_location_classes(files):
    config = load_config(write_config(files.root / "loc3.yaml", location_axes=3))
    settings = TrainSettings.from_config(config)
    spec = network_spec(settings, _inputs(files).load(settings.tasks))
    assert spec.n_locations == 27
    assert DAMTNetwork(spec).heads["location"].out_features == 27


@pytest.mark.slow
def test_mixed_precision_step_with_loss_scaling(files):
    """The GPU code path (bf16 autocast, GradScaler) exercised on the CPU.

    Without oneDNN: its bf16 Conv3d weight gradient is intermittently non-finite (the reason the
    trainer refuses bf16 on the CPU), and this test checks the step, not that kernel. Without
    the atlas task too: its full-resolution decoder takes 10 of the step's 12 s in bf16 on two
    cores without oneDNN, and adds nothing to the step's path (every head runs under the same
    autocast and scaler; test_training_on_a_gpu_uses_bf16_and_stays_finite has them all).
    """
    config = load_config(write_config(files.root / "amp.yaml", tasks={"atlas": False}))
    settings = TrainSettings.from_config(config)
    data = _inputs(files).load(settings.tasks)
    torch.manual_seed(0)
    objective = PretrainObjective(DAMTNetwork(network_spec(settings, data)), "uncertainty", 0.5)
    batch = default_collate([PretrainDataset(data, settings.views, 0)[i] for i in (0, 1)])
    optimizer = torch.optim.AdamW(param_groups(objective), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = [p.detach().clone() for p in objective.parameters()]
    with torch.backends.mkldnn.flags(enabled=False):
        out = train_step(objective, optimizer, scaler, batch, "bf16", clip_grad=1.0)
    assert out.applied and torch.isfinite(out.total) and torch.isfinite(out.grad_norm)
    assert all(torch.isfinite(v) for v in out.losses.values())
    moved = [not torch.equal(a, p) for a, p in zip(before, objective.parameters(), strict=True)]
    assert all(moved)
    assert scaler.get_scale() == 2.0**8  # no overflow, scale kept


def test_cpu_runs_refuse_half_precision():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == resolve_precision("fp32", cpu) == "fp32"
    for name in ("bf16", "fp16"):
        with pytest.raises(ValueError, match=f"precision {name} needs a GPU"):
            resolve_precision(name, cpu)


@pytest.mark.slow
def test_run_writes_encoder_card_metrics_tensorboard_checkpoints(finished_run):
    run, _ = finished_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        for task in TASKS:
            assert np.isfinite(r[f"loss/{task}"]) and r[f"weight/{task}"] > 0
        assert r["skipped_steps"] == 0 and r["samples_per_s"] > 0 and r["lr"] > 0
        # A learning signal per task next to its chance level.
        for name in SIGNALS.values():
            assert np.isfinite(r[f"signal/{name}"]) and np.isfinite(r[f"chance/{name}"]), name
        assert r["chance/rotation_accuracy"] == 0.1
        assert 0 <= r["signal/rotation_accuracy"] <= 1 and 0 <= r["signal/atlas_dice"] <= 1
        # 4 subjects, batches of 2: each anchor has 2·2 - 1 candidates.
        assert r["chance/contrastive_top1"] == pytest.approx(1 / 3)
        assert r["chance/morphometry_r2"] == 0.0 and r["chance/mim_l1_ratio"] == 1.0
        assert 0.25 <= r["chance/location_accuracy"] <= 1
    card = json.loads((run / "model_card.json").read_text())
    assert (run / card["architecture"]["monai_ssl_weights"]["file"]).is_file()
    signals = card["pretraining"]["learning_signals"]
    assert set(signals) == set(TASKS)
    assert signals["atlas"] == {
        "metric": "atlas_dice",
        "value": records[-1]["signal/atlas_dice"],
        "chance": records[-1]["chance/atlas_dice"],
    }
    assert card["data"]["subjects"] == 4
    assert card["data"]["morphometry"]["features"] == 12
    assert card["pretraining"]["tasks"] == list(TASKS)
    assert card["code"]["torch"] == torch.__version__
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert {p.name for p in (run / "checkpoints").iterdir()} == {
        "checkpoint.pt", "checkpoint.prev.pt", "checkpoint_0001.pt", "checkpoint_0002.pt",
    }  # fmt: skip
    state = load_checkpoint(run / "checkpoints")
    assert state.epoch == 2 and state.step == 4
    assert set(state.model) >= {f"balancer.log_vars.{t}" for t in TASKS}
    # The learned task weights are in the checkpoint and are what the metrics report.
    log_var = float(state.model["balancer.log_vars.mim"])
    assert records[-1]["weight/mim"] == pytest.approx(np.exp(-log_var), rel=1e-6)
    # The balancer's group kept its constant learning rate through warmup and cosine.
    groups = state.optimizer["param_groups"]
    assert [g["balancer"] for g in groups] == [False, False, True]
    assert groups[2]["lr"] == 0.01 and groups[2]["weight_decay"] == 0.0
    assert groups[0]["lr"] == pytest.approx(records[-1]["lr"])
    # 4 steps at 0.01: each weight moved, by up to about 4 %.
    for task in TASKS:
        assert 0.0 < abs(np.log(records[-1][f"weight/{task}"])) < 0.05, task


@pytest.mark.slow
def test_encoder_loads_into_monai_swinunetr_strictly(finished_run):
    run, config = finished_run
    weights = load_file(str(run / "encoder.safetensors"))
    spec = read_encoder_spec(run / "encoder.safetensors")
    card = json.loads((run / "model_card.json").read_text())
    assert card["architecture"]["window_size"] == spec.window
    net = SwinUNETR(out_channels=3, **card["architecture"]["swin_unetr_kwargs"])
    net.swinViT.load_state_dict(weights, strict=True)
    # The exported weights are the trained ones, not a fresh initialisation.
    state = load_checkpoint(run / "checkpoints").model
    for key, value in weights.items():
        torch.testing.assert_close(value, state[f"network.encoder.swinViT.{key}"])
    # What the probe uses gives the same features as SwinUNETR's own encoder.
    encoder = load_encoder(run / "encoder.safetensors")
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        expected = net.swinViT(x, normalize=True)[-1].mean(dim=(2, 3, 4))
        assert net(x).shape == (1, 3, 64, 64, 64)
    torch.testing.assert_close(pooled_features(encoder, x), expected)
    assert spec == TrainSettings.from_config(load_config(config)).encoder


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(finished_run, files):
    run, config = finished_run
    before = (run / "metrics.jsonl").read_text()
    weights = load_file(str(run / "encoder.safetensors"))
    assert damt_main(train_args(files, config, run)) == 0
    assert (run / "metrics.jsonl").read_text() == before
    for key, value in load_file(str(run / "encoder.safetensors")).items():
        assert torch.equal(value, weights[key])


def _copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("train.lock"))
    return target


@pytest.mark.slow
def test_resume_refuses_a_run_with_another_network(finished_run, files, tmp_path, capsys):
    run = _copy_run(finished_run[0], tmp_path / "run")
    # One more epoch than trained: a resume, with another contrastive head.
    other = write_config(tmp_path / "other.yaml", contrastive_dim=24, epochs=3)
    assert damt_main(train_args(files, other, run)) == 2
    err = capsys.readouterr().err
    assert "another network" in err and "contrastive_dim 32 in the checkpoint, 24 now" in err


@pytest.mark.slow
def test_a_checkpoint_from_before_the_projector_option_resumes_with_the_linear_head(
    finished_run, files, tmp_path, capsys
):
    """A run interrupted before ``contrastive.projector`` existed (its checkpoint's network
    spec has no such key) resumes with the default, linear head, and refuses ``mlp``."""
    run = _copy_run(finished_run[0], tmp_path / "run")
    latest = run / "checkpoints" / "checkpoint.pt"
    state = torch.load(latest, weights_only=True)
    del state["network"]["contrastive_projector"]
    torch.save(state, latest)
    mlp = write_config(tmp_path / "mlp.yaml", contrastive={"projector": "mlp"}, epochs=3)
    assert damt_main(train_args(files, mlp, run)) == 2
    assert "contrastive_projector linear in the checkpoint, mlp now" in capsys.readouterr().err
    assert damt_main(train_args(files, write_config(tmp_path / "c.yaml", epochs=3), run)) == 0
    assert load_checkpoint(run / "checkpoints").epoch == 3


@pytest.mark.slow
def test_resume_refuses_a_run_with_another_task_balancing(finished_run, files, tmp_path, capsys):
    run = _copy_run(finished_run[0], tmp_path / "run")
    other = write_config(tmp_path / "equal.yaml", balancing="equal", epochs=3)
    assert damt_main(train_args(files, other, run)) == 2
    assert "balancing uncertainty in the checkpoint, equal now" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoints_of_another_format_are_refused(finished_run, files, tmp_path, capsys):
    run = _copy_run(finished_run[0], tmp_path / "run")
    for path in (run / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        torch.save({**state, "format": 1}, path)
    assert damt_main(train_args(files, finished_run[1], run)) == 2
    assert "holds checkpoints of format 1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_whose_last_checkpoint_was_cut_short_resumes_from_the_one_before(
    finished_run, files, tmp_path, capsys
):
    """Issue 30, case 2, end to end: the finished run's last checkpoint and the last line of its
    metrics cut short (a kill during their writes); the run trains its last epoch again from
    the checkpoint before and ends with the same weights, bitwise."""
    run = _copy_run(finished_run[0], tmp_path / "run")
    for name in ("encoder.safetensors", "model_card.json"):
        (run / name).unlink()
    latest = run / "checkpoints" / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-40])
    assert damt_main(train_args(files, finished_run[1], run)) == 0
    err = capsys.readouterr().err
    assert "using checkpoint.prev.pt (epoch 1)" in err and "resuming" in err
    assert "metrics.jsonl line 2 is not a whole epoch record" in err
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    for key, value in load_file(str(finished_run[0] / "encoder.safetensors")).items():
        assert torch.equal(value, load_file(str(run / "encoder.safetensors"))[key]), key


def _wider_inputs(files, root: Path) -> tuple[Path, Path]:
    """The training set's tables with one more column each, and a label table with one more
    class: the network these inputs give has other head widths.
    """
    tables = root / "features"
    tables.mkdir(parents=True)
    for name in TABLES:
        frame = pd.read_parquet(files.tables_dir / normalized_table_file(name))
        frame[f"{name}_extra"] = 0.5
        frame.to_parquet(tables / normalized_table_file(name))
    labels = pd.read_csv(files.label_table, sep="\t")
    n = len(labels)
    labels.loc[n] = [n, int(labels["label"].max()) + 1, "region-extra"]
    labels.to_csv(root / "labels.tsv", sep="\t", index=False)
    return tables, root / "labels.tsv"


@pytest.mark.slow
def test_export_rebuilds_the_trained_network_and_keeps_the_training_facts(
    finished_run, files, tmp_path, capsys
):
    """Exporting a finished run again (retrain: never, or a rerun under cohort) uses what the
    checkpoint was trained with: its network, not one rebuilt from changed tables and label
    table, and its world size, batch, learning rate, steps and data in the model card.
    """
    run = _copy_run(finished_run[0], tmp_path / "run")
    card_before = json.loads((run / "model_card.json").read_text())
    tables, labels = _wider_inputs(files, tmp_path / "data")
    # Another batch size: other steps per epoch, global batch and peak lr, were it training.
    config = write_config(tmp_path / "c.yaml", batch_size_per_gpu=1)
    args = train_args(files, config, run)
    args[args.index("--tables-dir") + 1] = str(tables)
    args[args.index("--label-table") + 1] = str(labels)
    capsys.readouterr()
    assert damt_main(args) == 0
    assert "do not match" not in capsys.readouterr().err
    card = json.loads((run / "model_card.json").read_text())
    assert card["pretraining"] == card_before["pretraining"]
    assert card["data"] == card_before["data"]
    assert card["pretraining"]["global_batch"] == 2 and card["pretraining"]["steps"] == 4
    assert card["data"]["morphometry"]["features"] == 12
    state = load_checkpoint(run / "checkpoints").model
    for key, value in load_file(str(run / "encoder.safetensors")).items():
        assert torch.equal(value, state[f"network.encoder.swinViT.{key}"])


@pytest.mark.slow
def test_odd_last_batch_and_switched_off_tasks_without_tables(tmp_path):
    files = write_training_set(tmp_path / "data", n_subjects=5)
    config = load_config(
        write_config(
            tmp_path / "c.yaml", epochs=1, warmup_epochs=0,
            tasks={"morphometry": False, "radiomics": False, "location": False},
        )
    )  # fmt: skip
    inputs = TrainInputs(files.manifest, files.label_table, {})
    result = run_pretraining(config, inputs, tmp_path / "run")
    record = result.last_record
    assert record["step"] == 3  # batches of 2, 2 and 1
    assert record["skipped_steps"] == 0
    assert "loss/morphometry" not in record
    assert all(np.isfinite(record[f"loss/{t}"]) for t in ("rotation", "contrastive", "mim"))


def test_missing_table_of_a_switched_on_task_is_a_clear_error(files, tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml"))
    inputs = TrainInputs(files.manifest, files.label_table, {})
    with pytest.raises(ValueError, match="morphometry task is on but the morphometry_global"):
        run_pretraining(config, inputs, tmp_path / "run")


def _poison(files, subjects):
    for sid in subjects:
        path = files.root / "subjects" / sid / "cache" / "image.npy"
        image = np.load(path)
        image[:] = np.nan
        np.save(path, image)


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    files = write_training_set(tmp_path / "data", n_subjects=3)
    _poison(files, ["sub-00"])
    config = write_config(tmp_path / "c.yaml", epochs=1, warmup_epochs=0, batch_size_per_gpu=1)
    result = run_pretraining(load_config(config), _inputs(files), tmp_path / "run")
    assert result.last_record["skipped_steps"] == 1  # the step that drew sub-00
    assert result.last_record["step"] == 3
    assert all(torch.isfinite(p).all() for p in result.objective.parameters())


@pytest.mark.slow
def test_a_run_that_keeps_producing_nonfinite_losses_stops(tmp_path):
    files = write_training_set(tmp_path / "data", n_subjects=4)
    _poison(files, files.subjects)
    config = load_config(write_config(tmp_path / "c.yaml", max_consecutive_nonfinite=2))
    with pytest.raises(NonFiniteLossError, match="2 consecutive steps"):
        run_pretraining(config, _inputs(files), tmp_path / "run")


def _checkpoint(epoch: int, w: torch.Tensor) -> Checkpoint:
    return Checkpoint(epoch, 2 * epoch, 0, {"w": w}, {}, {}, {}, {}, None)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _checkpoint(1, torch.ones(3)), save_every=0)

    def broken_save(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, _checkpoint(2, torch.zeros(3)), save_every=0)
    kept = load_checkpoint(tmp_path)
    assert kept.epoch == 1 and torch.equal(kept.model["w"], torch.ones(3))
    # The latest stays the latest: a failed write touches nothing that was there.
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_checkpoint_cut_short_falls_back_to_the_one_before(tmp_path, caplog):
    """Issue 30, case 2: a latest checkpoint that a kill or a power cut left truncated, empty or
    of another format is skipped for the newest readable one, both named; nothing is deleted."""
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, _checkpoint(epoch, torch.full((3,), float(epoch))), save_every=2)
    assert load_checkpoint(tmp_path).epoch == 3
    latest = tmp_path / "checkpoint.pt"
    whole = latest.read_bytes()
    for broken in (whole[: len(whole) // 2], b""):
        latest.write_bytes(broken)
        with caplog.at_level(logging.WARNING, logger="damt"):
            kept = load_checkpoint(tmp_path)
        assert kept.epoch == 2 and torch.equal(kept.model["w"], torch.full((3,), 2.0))
        assert "using checkpoint.prev.pt (epoch 2)" in caplog.text
        assert "checkpoint.pt: " in caplog.text  # the skipped file, named with its error
        caplog.clear()
    (tmp_path / "checkpoint.prev.pt").write_bytes(b"")
    assert load_checkpoint(tmp_path).epoch == 2  # the copy kept every save_every epochs
    assert {p.name for p in tmp_path.iterdir()} == {
        "checkpoint.pt", "checkpoint.prev.pt", "checkpoint_0002.pt",
    }  # fmt: skip
    # Killed between the two renames of a save: the new checkpoint waits as checkpoint.next.pt.
    latest.unlink()
    save_checkpoint(tmp_path / "next", _checkpoint(4, torch.ones(3)), save_every=0)
    (tmp_path / "next" / "checkpoint.pt").rename(tmp_path / "checkpoint.next.pt")
    assert load_checkpoint(tmp_path).epoch == 4
    # Nothing readable: the newest file's error, not a silent fresh start.
    for path in tmp_path.glob("*.pt"):
        path.write_bytes(b"")
    with pytest.raises(EOFError):
        load_checkpoint(tmp_path)


def test_a_metrics_line_cut_short_is_skipped_and_named(tmp_path, caplog):
    """Issue 30, case 4: the last line of metrics.jsonl cut in half by a kill; the records before
    it are read (report, model card, resume) and the skipped line is named."""
    from damt.training.metrics import read_records

    lines = [json.dumps({"epoch": e, "loss": 1.0 / (e + 1)}) for e in range(3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:9])
    with caplog.at_level(logging.WARNING, logger="damt"):
        assert [r["epoch"] for r in read_records(tmp_path)] == [0, 1]
    assert "metrics.jsonl line 3 is not a whole epoch record" in caplog.text


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoints_load_with_weights_only(tmp_path):
    with open(tmp_path / "checkpoint.pt", "wb") as fh:
        torch.save({"epoch": 1, "payload": _Payload()}, fh)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path)


@pytest.fixture(scope="module")
def uninterrupted(files, tmp_path_factory):
    """A two-epoch run trained in this process on one thread, and its config: what every
    interrupted and resumed run must end as."""
    root = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(root / "c.yaml", epochs=2, save_every=0)
    train_in_process(files, config, root / "full")
    return root / "full", config


def _same_run(a: Path, b: Path) -> None:
    """Runs ``a`` and ``b`` ended with equal weights, optimiser-visible state and epoch records
    (timings aside)."""
    ca, cb = load_checkpoint(a / "checkpoints"), load_checkpoint(b / "checkpoints")
    for key, value in ca.model.items():
        assert torch.equal(value, cb.model[key]), key
    for key, value in load_file(str(a / "encoder.safetensors")).items():
        assert torch.equal(value, load_file(str(b / "encoder.safetensors"))[key])
    timing = ("epoch_time_s", "samples_per_s", "eval/seconds")
    for ra, rb in zip(_records(a), _records(b), strict=True):
        assert {k: v for k, v in ra.items() if k not in timing} == {
            k: v for k, v in rb.items() if k not in timing
        }


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(files, uninterrupted, tmp_path, caplog):
    """The trainer's one real SIGKILL: a ``damt train`` process killed after the first
    checkpoint and resumed ends where an uninterrupted run does. The uninterrupted run and the
    resume train in this process, on the killed process's one thread (``--cores 1``)."""
    full, config = uninterrupted
    interrupted = tmp_path / "interrupted"
    proc = start_training(files, config, interrupted, "--cores", "1")
    kill_at_first_checkpoint(proc, interrupted)
    assert load_checkpoint(interrupted / "checkpoints").epoch == 1
    assert not (interrupted / "encoder.safetensors").exists()

    with caplog.at_level(logging.INFO, logger="damt"):
        train_in_process(files, config, interrupted)
    assert "resuming" in caplog.text
    _same_run(full, interrupted)
    assert [r["epoch"] for r in _records(interrupted)] == [0, 1]


def _signal_after(steps: int, monkeypatch) -> None:
    """Send this process SIGTERM (for real) right after its ``steps``-th optimisation step."""
    from damt.training import loop

    step, done = loop.accumulated_step, []

    def step_then_signal(*args, **kwargs):
        out = step(*args, **kwargs)
        done.append(1)
        if len(done) == steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(loop, "accumulated_step", step_then_signal)


@pytest.mark.slow
def test_a_stop_signal_checkpoints_the_step_and_the_resume_matches_an_uninterrupted_run(
    files, uninterrupted, tmp_path, monkeypatch, capsys
):
    """Issue 30, case 1: SIGTERM (a cluster's preemption or time limit) in the middle of an
    epoch, and then in its last step: each time the run stops at the next step boundary with a
    checkpoint and exit status 75, and the resumes end where an uninterrupted run does (two
    steps per epoch: 4 subjects, batch 2)."""
    full, config = uninterrupted
    run = tmp_path / "stopped"
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        _signal_after(1, patch)
        assert damt_main(train_args(files, config, run, "--cores", "1")) == STOPPED_EXIT
    said = "stopped by SIGTERM after step 1 of 2 in epoch 1; run it again to resume"
    assert said in capsys.readouterr().err
    checkpoint = load_checkpoint(run / "checkpoints")
    assert (checkpoint.epoch, checkpoint.step, checkpoint.partial["steps"]) == (0, 1, 1)
    assert checkpoint.partial["sums"]["applied_steps"] == 1
    assert json.loads((run / STOPPED_FILE).read_text()) == {
        "signal": "SIGTERM", "epoch": 0, "steps": 1, "iters": 2,
    }  # fmt: skip
    assert not (run / "metrics.jsonl").exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler before the run is back

    # Bad input: the same folder resumed with another split of the epoch (batch size 1: four
    # steps) starts the epoch again; a partial epoch past a lowered `epochs` is no finished run.
    other = shutil.copytree(run, tmp_path / "other-batch")
    with monkeypatch.context() as patch:
        _signal_after(1, patch)
        with pytest.raises(TrainingStopped, match="after step 1 of 4 in epoch 1"):
            train_in_process(files, write_config(tmp_path / "b1.yaml", batch_size_per_gpu=1,
                                                 epochs=2, save_every=0), other)  # fmt: skip
    assert "with another split of the epoch" in capsys.readouterr().err
    assert load_checkpoint(other / "checkpoints").partial["layout"] == [4, 1, 1, 1]
    past = load_checkpoint(run / "checkpoints")
    past.epoch, past.step = 1, 3
    save_checkpoint(other / "checkpoints", past, 0)
    lowered = write_config(tmp_path / "e1.yaml", epochs=1, warmup_epochs=0)
    with pytest.raises(ValueError, match=r"stopped 1 steps into epoch 2, past pretrain\.epochs 1"):
        train_in_process(files, lowered, other)

    # Resumed inside epoch 1, then stopped by a signal in its last step: epoch 1 ends with its
    # checkpoint, and the run stops before epoch 2.
    with monkeypatch.context() as patch:
        _signal_after(1, patch)
        with pytest.raises(TrainingStopped, match="after step 0 of 2 in epoch 2"):
            train_in_process(files, config, run)
    assert "resuming" in (said := capsys.readouterr().err), said
    assert "in epoch 1 after step 1 of 2" in said
    checkpoint = load_checkpoint(run / "checkpoints")
    assert (checkpoint.epoch, checkpoint.step, checkpoint.partial) == (1, 2, None)
    assert [r["epoch"] for r in _records(run)] == [0]

    train_in_process(files, config, run)
    _same_run(full, run)


@pytest.mark.gpu
def test_training_on_a_gpu_uses_bf16_and_stays_finite(files, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    config = load_config(write_config(tmp_path / "c.yaml", gpus=1, deterministic=False))
    result = run_pretraining(config, _inputs(files), tmp_path / "run")
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert card["pretraining"]["precision"] == expected
    assert result.last_record["skipped_steps"] == 0
    assert np.isfinite(result.last_record["loss"])
