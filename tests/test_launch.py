"""The pretrain job's launcher: retrain policy, superseded runs, GPU grant, torchrun command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from damt.config import load_config
from damt.training.checkpoint import Checkpoint, save_checkpoint
from damt.training.launch.checks import LaunchError, check_gpus, check_nodes
from damt.training.launch.commands import torchrun_command, trainer_command
from damt.training.launch.signature import (
    SIGNATURE_FILE,
    Action,
    plan_pretraining,
    signature,
    supersede,
    training_subjects,
)
from damt.training.report import plot_training
from tests.conftest import REPO, subprocess_env
from tests.training_data import run_settings, section_settings

SIG = {
    "subjects": "a",
    "n_subjects": 3,
    "pretrain": "p",
    "feature_columns": "f",
    "label_table": "l",
}


def make_run(run_dir: Path, epoch: int | None, sig: dict | None = SIG) -> Path:
    if epoch is not None:
        (run_dir / "checkpoints").mkdir(parents=True)
        checkpoint = Checkpoint(epoch, epoch, 0, {}, {}, {}, {}, {}, None)
        save_checkpoint(run_dir / "checkpoints", checkpoint, save_every=0)
        (run_dir / "metrics.jsonl").write_text('{"epoch": 0}\n')
    if sig is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SIGNATURE_FILE).write_text(json.dumps(sig))
    return run_dir


@pytest.mark.parametrize(
    ("epoch", "stored", "policy", "action", "supersede_"),
    [
        (None, None, "cohort", Action.TRAIN, False),  # nothing trained yet
        (2, SIG, "cohort", Action.RESUME, False),  # interrupted: resume
        (2, {**SIG, "subjects": "b"}, "cohort", Action.TRAIN, True),  # interrupted, other cohort
        (2, {**SIG, "subjects": "b"}, "never", Action.RESUME, False),
        (4, SIG, "cohort", Action.EXPORT, False),  # finished, same cohort: keep
        (4, {**SIG, "n_subjects": 9}, "cohort", Action.EXPORT, False),
        (4, {**SIG, "subjects": "b"}, "cohort", Action.TRAIN, True),  # the cohort changed
        (4, {**SIG, "pretrain": "q"}, "cohort", Action.TRAIN, True),  # the settings changed
        (4, SIG, "always", Action.TRAIN, True),
        (4, {**SIG, "subjects": "b"}, "never", Action.EXPORT, False),
        (4, None, "cohort", Action.TRAIN, True),  # checkpoints of unknown provenance
    ],
)
def test_plan(tmp_path: Path, epoch, stored, policy, action, supersede_):
    run = make_run(tmp_path / "run", epoch, stored)
    plan = plan_pretraining(run, SIG, policy, epochs=4)
    assert (plan.action, plan.supersede) == (action, supersede_), plan.reason
    # The signature on file describes what the checkpoints were trained on.
    kept_on_other_inputs = action == Action.EXPORT and policy == "never" and stored != SIG
    assert plan.sign == (not kept_on_other_inputs), plan.reason


def test_supersede_moves_everything_aside(tmp_path: Path):
    run = make_run(tmp_path / "run", 4)
    (run / "tb").mkdir()
    target = supersede(run)
    assert target.parent == run / "superseded"
    assert sorted(p.name for p in target.iterdir()) == [
        "checkpoints",
        "metrics.jsonl",
        SIGNATURE_FILE,
        "tb",
    ]
    assert not (run / "checkpoints").exists()


def test_gpu_grant_must_match_the_config():
    check_gpus(run_settings(gpus=2, precision="bf16"), 2)
    check_gpus(run_settings(gpus=0, precision="auto"), 0)
    with pytest.raises(LaunchError, match=r"precision is bf16 but pretrain\.gpus is 0"):
        check_gpus(run_settings(gpus=0, precision="bf16"), 0)
    with pytest.raises(LaunchError) as err:
        check_gpus(run_settings(gpus=4, precision="auto"), 2)
    msg = str(err.value)
    assert "pretrain.gpus is 4 but this job was given gpu=2" in msg
    assert "--resources gpu=4" in msg and "pretrain.gpus: 2" in msg


def test_trainer_commands_use_this_interpreter():
    cmd = torchrun_command(3, ["train", "--out", "x"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc_per_node=3" in cmd
    assert cmd[-5:] == ["-m", "damt", "train", "--out", "x"]
    # One process runs without torchrun; several under it.
    assert trainer_command(1, ["train"]) == [sys.executable, "-m", "damt", "train"]
    assert trainer_command(2, ["train"]) == torchrun_command(2, ["train"])


def _dispositions(cmd: list[str], **popen) -> str:
    """Whether a Python started by ``cmd`` (+ its ``-c`` code) ignores SIGTERM and SIGUSR1
    (SIG_IGN, 1)."""
    code = "import signal as s; print(s.getsignal(s.SIGTERM) == s.getsignal(s.SIGUSR1) == 1)"
    out = subprocess.run([*cmd, "-c", code], capture_output=True, text=True, **popen)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_torchrun_and_its_nodes_leave_the_stop_signals_to_the_trainers(monkeypatch):
    """Issue 30, case 1: torchrun would kill the trainers on SIGTERM before their checkpoint is
    written; the launcher makes it (on this node, and on every node of an srun) ignore the stop
    signals and handle only the others."""
    from damt.training.launch import commands
    from damt.training.launch.job import _launched_process

    assert "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT" in torchrun_command(1, [])
    ignored = "True"
    assert _dispositions([sys.executable], preexec_fn=_launched_process) == ignored
    monkeypatch.setattr(commands, "allocation_hosts", lambda environ: ["a", "b"])
    monkeypatch.setattr(commands, "node_address", lambda node: node)
    settings = run_settings(nodes=2, gpus=0, collective_timeout_s=60)
    cmd = commands.multinode_command(settings, 1, 1, [], {"SLURM_JOB_ID": "1"}, 1)
    shield = cmd[cmd.index("sh") : cmd.index(sys.executable)]
    assert _dispositions([*shield, sys.executable]) == ignored


def test_a_stop_signal_to_the_job_reaches_every_trainer_under_it(tmp_path: Path):
    """Issue 30, case 1: a stop signal sent to the pretrain job's process alone is passed on to
    the trainers (in sessions of their own, under a torchrun that ignores it), and the job
    waits for them instead of dying."""
    import signal

    from damt.training.launch.job import _forwarding_stop_signals

    stopped, ready = tmp_path / "stopped", tmp_path / "ready"
    trainer = (
        "import pathlib, signal, sys, time\n"
        "def stop(*_):\n"
        f"    pathlib.Path({str(stopped)!r}).write_text('stopped'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    torchrun = (
        "import signal, subprocess, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"subprocess.Popen([sys.executable, '-c', {trainer!r}], start_new_session=True).wait()\n"
    )
    before = signal.getsignal(signal.SIGTERM)
    proc = subprocess.Popen([sys.executable, "-c", torchrun], env=subprocess_env())
    with _forwarding_stop_signals() as launched:
        launched.append(proc.pid)
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # to this process (the job) only
        assert proc.wait(timeout=30) == 0
    assert stopped.read_text() == "stopped"
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_stop_is_kept_in_the_run_folder_and_the_job_says_how_to_resume(tmp_path, monkeypatch):
    """Issue 30, case 1: the trainers' stop record becomes a line of the run's stops.jsonl
    (a requeued job's rule log starts anew); outside SLURM the job ends saying how to resume."""
    from damt.training.launch.job import PretrainingStopped, _requeue
    from damt.training.process import STOPPED_FILE, read_stops, take_stopped, write_stopped

    assert take_stopped(tmp_path) is None
    write_stopped(tmp_path, {"signal": "SIGTERM", "epoch": 2, "steps": 3, "iters": 5})
    stop = take_stopped(tmp_path, slurm_job=None)
    assert stop == {"signal": "SIGTERM", "epoch": 2, "steps": 3, "iters": 5, "slurm_job": None}
    (tmp_path / STOPPED_FILE).write_text('{"signal": "SIGTE')  # cut short by a kill: a stop
    assert take_stopped(tmp_path) == {}
    assert read_stops(tmp_path) == [stop, {}]
    assert not (tmp_path / STOPPED_FILE).exists()
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(PretrainingStopped) as err:
        _requeue(stop, tmp_path)
    assert str(err.value) == (
        "training stopped by SIGTERM in epoch 3, step 3 of 5, checkpoint saved; run the "
        f"workflow again to resume in {tmp_path} (the profile's retries resubmit a failed job)"
    )


def test_signature_follows_the_training_subjects(tmp_path: Path):
    manifest = tmp_path / "manifest.parquet"
    frame = pd.DataFrame(
        {
            "subject_id": ["a", "b", "c"],
            "status": ["pass", "warn", "fail"],
            "has_cache": [True, True, False],
        }
    )
    frame.to_parquet(manifest)
    labels = tmp_path / "labels.tsv"
    labels.write_text("index\tlabel\tname\n0\t0\tUnknown\n")
    table = tmp_path / "t.parquet"
    pd.DataFrame({"subject_id": ["a"], "x": [1.0]}).to_parquet(table)
    settings = run_settings(epochs=3)
    assert training_subjects(manifest) == ["a", "b"]
    first = signature(settings, manifest, labels, {"radiomics": table})
    # Feature values change: same signature. A new training subject: new signature.
    pd.DataFrame({"subject_id": ["a"], "x": [2.0]}).to_parquet(table)
    assert signature(settings, manifest, labels, {"radiomics": table}) == first
    frame.loc[2, ["status", "has_cache"]] = ["pass", True]
    frame.to_parquet(manifest)
    changed = signature(settings, manifest, labels, {"radiomics": table})
    assert changed["subjects"] != first["subjects"] and changed["n_subjects"] == 3
    pd.DataFrame({"subject_id": ["a"], "y": [2.0]}).to_parquet(table)
    assert (
        signature(settings, manifest, labels, {"radiomics": table})["feature_columns"]
        != changed["feature_columns"]
    )


def test_training_report_plots(tmp_path: Path):
    records = [
        {
            "epoch": e,
            "loss": 10.0 - e,
            "loss/rotation": 2.0 - 0.1 * e,
            "loss/mim": None,
            "weight/rotation": 1.0 + 0.01 * e,
        }
        for e in range(3)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_training(tmp_path, tmp_path / "c.png", tmp_path / "w.png") == 3
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "w.png").is_file()
    with pytest.raises(ValueError, match=r"no metrics\.jsonl records"):
        plot_training(tmp_path / "empty", tmp_path / "c2.png", tmp_path / "w2.png")


def test_one_trainer_per_run_folder(tmp_path: Path):
    from damt.training.process import run_lock

    busy = r"being trained by another process \(pid \d+"
    with run_lock(tmp_path), pytest.raises(RuntimeError, match=busy), run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # released on exit
        pass


def _signature_inputs(tmp_path: Path) -> tuple[Path, Path, dict]:
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"subject_id": ["a"], "status": ["pass"], "has_cache": [True]}).to_parquet(
        manifest
    )
    labels = tmp_path / "labels.tsv"
    labels.write_text("index\tlabel\tname\n0\t0\tUnknown\n")
    return manifest, labels, {}


def test_signature_ignores_operational_pretrain_keys(tmp_path: Path):
    from damt.config import load_config
    from tests.training_data import write_config

    manifest, labels, tables = _signature_inputs(tmp_path)
    p = load_config(write_config(tmp_path / "c.yaml"))["pretrain"]
    first = signature(section_settings(p), manifest, labels, tables)
    operational = {
        "threads": p["threads"] + 1,
        "num_workers": p["num_workers"] + 1,
        "log_every_steps": p["log_every_steps"] + 1,
        "save_every": p["save_every"] + 1,
        "max_consecutive_nonfinite": p["max_consecutive_nonfinite"] + 1,
        "retrain": "never",
        "run_name": "elsewhere",
        # A preset that is not in use shapes nothing.
        "presets": {**p["presets"], "full": {**p["presets"]["full"], "embed_dim": 96}},
        "attention": "monai",
        "compile": True,
        "eval_every": 3,
        "eval_subjects": 7,
        "keep_best": True,
    }
    for key, value in operational.items():
        assert signature(section_settings({**p, key: value}), manifest, labels, tables) == first, (
            key
        )
    for key, value in {"base_lr": p["base_lr"] * 2, "epochs": p["epochs"] + 1}.items():
        changed = signature(section_settings({**p, key: value}), manifest, labels, tables)
        assert changed["pretrain"] != first["pretrain"], key
    tiny = {**p["presets"]["tiny"], "embed_dim": 24}
    other = {**p, "presets": {**p["presets"], "tiny": tiny}}
    assert (
        signature(section_settings(other), manifest, labels, tables)["pretrain"]
        != (first["pretrain"])
    )
    # Gradient checkpointing of the preset in use computes the same steps.
    flipped = {**p["presets"]["tiny"], "checkpointing": not p["presets"]["tiny"]["checkpointing"]}
    flip = {**p, "presets": {**p["presets"], "tiny": flipped}}
    assert signature(section_settings(flip), manifest, labels, tables) == first


@pytest.mark.parametrize("key", ["feature_columns", "label_table"])
def test_never_refuses_to_resume_on_other_targets(tmp_path: Path, key):
    """Its heads learnt the old columns or classes: resuming on other ones is meaningless, and
    the network would not even load when their number changed.
    """
    run = make_run(tmp_path / "run", 2, {**SIG, key: "other"})
    with pytest.raises(LaunchError) as err:
        plan_pretraining(run, SIG, "never", epochs=4)
    msg = str(err.value)
    assert "retrain: never" in msg and key in msg and "epoch 2 of 4" in msg
    assert "retrain: cohort" in msg and "epochs: 2" in msg


def test_bad_settings_never_touch_a_trained_run(tmp_path: Path):
    """Issue 18, case 1: with epochs 1 and the inherited warmup_epochs 1, the job moved the
    checkpoints to superseded/ and only then failed; the settings are checked first now."""
    from damt.config import load_config
    from damt.training.launch.job import launch
    from tests.training_data import write_config

    config = load_config(write_config(tmp_path / "c.yaml"))
    pretrain = {**config["pretrain"], "epochs": 1, "warmup_epochs": 1, "retrain": "always"}
    run = make_run(tmp_path / "run", 4, SIG)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    manifest, labels, tables = _signature_inputs(tmp_path)
    with pytest.raises(LaunchError, match=r"warmup_epochs \(1\) must be smaller.*nothing was"):
        launch(pretrain, manifest, labels, tables, run, granted_gpus=pretrain["gpus"], cores=1)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert not (run / "superseded").exists()


def test_more_gpus_than_the_job_sees_is_refused_before_anything_moves(tmp_path: Path):
    from damt.training.launch.checks import check_hardware

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(LaunchError, match=rf"sees {visible} GPU\(s\)"):
        check_hardware(run_settings(gpus=visible + 1))
    check_hardware(run_settings(gpus=0))


def test_live_lock_is_named_and_a_dead_ones_is_taken_over(tmp_path: Path):
    """Issue 18, case 8: a live trainer's lock is named in the job's own error (not only in
    logs/pretrain/<run>.log) before anything moves; the lock file of a dead process is no lock."""
    import os

    from damt.training.launch.checks import check_run_free
    from damt.training.process import lock_holder, run_lock

    run = make_run(tmp_path / "run", 4, SIG)
    with run_lock(run), pytest.raises(LaunchError, match=rf"process \(pid {os.getpid()} on "):
        check_run_free(run)
    (run / "train.lock").write_text("pid 999999 on elsewhere\n")  # left by a killed trainer
    assert lock_holder(run) is None
    check_run_free(run)
    with run_lock(run):
        assert lock_holder(run).startswith(f"pid {os.getpid()} ")


def test_trainer_dies_with_its_parent(tmp_path: Path):
    """Issue 18, case 8: die_with_parent (what `damt train` calls first) kills a process whose
    parent is killed, even in a session of its own (as torchrun starts its trainers)."""
    import os
    import signal
    import subprocess
    import time

    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'from damt.training.process import "
        "die_with_parent; die_with_parent(); import time; time.sleep(60)'], "
        "start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env=subprocess_env(), text=True
    )
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the child has imported damt and asked for the signal
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        with open(f"/proc/{child}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.1)
    state = Path(f"/proc/{child}/stat").read_text() if Path(f"/proc/{child}").exists() else ""
    assert not state or state.rsplit(")", 1)[1].split()[0] == "Z"


def test_several_nodes_outside_slurm_are_refused_before_anything_moves(tmp_path, monkeypatch):
    from damt.config import load_config
    from damt.training.launch.job import launch
    from tests.training_data import write_config

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    pretrain = {**load_config(write_config(tmp_path / "c.yaml", nodes=2))["pretrain"]}
    run = make_run(tmp_path / "run", 1, SIG)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    manifest, labels, tables = _signature_inputs(tmp_path)
    with pytest.raises(LaunchError, match=r"pretrain.nodes is 2 but .* outside a SLURM"):
        launch(pretrain, manifest, labels, tables, run, granted_gpus=0, cores=1)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    # Submitted to SLURM (the slurm executor), or inside an allocation, it may run.
    check_nodes(section_settings(pretrain), {}, cluster_executor=True)
    check_nodes(section_settings(pretrain), {"SLURM_JOB_ID": "7"})
    check_nodes(section_settings({**pretrain, "nodes": 1}), {})


def test_multinode_command_starts_one_torchrun_per_node(monkeypatch):
    from damt.training.launch import commands as launch

    monkeypatch.setattr(launch, "allocation_hosts", lambda environ: ["gpu07", "gpu08"])
    monkeypatch.setattr(launch, "node_address", lambda node: f"{node}.cluster")
    settings = run_settings(nodes=2, gpus=4, collective_timeout_s=900)
    job = {"SLURM_JOB_ID": "42"}
    cmd = launch.multinode_command(settings, 4, 16, ["train", "--out", "x"], job, 29511)
    torchrun = cmd.index(sys.executable)
    assert cmd[:torchrun] == [
        "srun",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=16",
        "--gres=gpu:4",
        "--kill-on-bad-exit=1",
        "--label",
        *("sh", "-c", 'trap "" TERM USR1; exec "$0" "$@"'),  # each node's torchrun ignores them
    ]
    options = cmd[torchrun:]
    assert options[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" not in options
    for option in ("--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-id=damt-42"):
        assert option in options
    endpoint = next(o for o in options if o.startswith("--rdzv-endpoint="))
    assert endpoint == "--rdzv-endpoint=gpu07.cluster:29511"  # the store the launcher hosts
    assert "--rdzv-conf=join_timeout=900,is_host=false" in options
    assert options[-5:] == ["-m", "damt", "train", "--out", "x"]
    # CPU nodes ask for no GPUs; an allocation of another size is refused.
    cpu = launch.multinode_command(run_settings(nodes=2, gpus=0), 2, 8, [], job, 29511)
    assert not [o for o in cpu if o.startswith("--gres")]
    with pytest.raises(LaunchError, match="allocation has 2 node"):
        launch.multinode_command(run_settings(nodes=3, gpus=4), 4, 16, [], job, 29511)


def test_one_node_signatures_are_those_of_runs_before_nodes_existed():
    from damt.training.launch.signature import model_settings

    base = {"gpus": 2, "epochs": 300}
    assert model_settings({**base, "nodes": 1}) == model_settings(base)
    assert model_settings({**base, "nodes": 2}) != model_settings(base)
    assert model_settings({**base, "collective_timeout_s": 60}) == model_settings(base)


def test_a_subset_signs_as_before_its_key_was_renamed():
    """``pretrain.subset_size`` was ``pretrain.subjects``: the signature keeps the first name,
    so data-scaling runs signed before the rename are neither retrained nor restarted."""
    from damt.io import stable_hash
    from damt.training.launch.signature import model_settings

    base = {"gpus": 2, "epochs": 300}
    signed_before = {**base, "subjects": 1000}  # what model_settings returned then
    assert model_settings({**base, "subset_size": 1000}) == signed_before
    assert stable_hash(model_settings({**base, "subset_size": 1000})) == stable_hash(signed_before)
    assert model_settings({**base, "subset_size": None}) == model_settings(base) == base


def test_run_settings_refuse_a_crop_the_network_cannot_halve(tmp_path: Path):
    """The crop-size check of the trainer, as the Snakefile calls it at parse time."""
    from damt.config import load_config
    from damt.training.launch.checks import check_run_settings
    from tests.training_data import write_config

    config = load_config(write_config(tmp_path / "c.yaml", presets={"tiny": {"global_crop": 40}}))
    with pytest.raises(LaunchError, match=r"global_crop 40 must be a multiple.*nothing was"):
        check_run_settings(config["pretrain"])


def test_signatures_of_the_demo_and_the_paper_plan_are_unchanged():
    """Issue 24, item 3: the general signature rule signs every run as before (the demo's and
    each of the 51 runs of the paper's plan: tests/data/signatures.json), so an upgrade neither
    retrains finished runs nor restarts interrupted ones."""
    from damt.experiments.plan import plan_runs
    from damt.io import stable_hash
    from damt.training.launch.signature import model_settings

    recorded = json.loads((REPO / "tests" / "data" / "signatures.json").read_text())
    recorded.pop("_")
    demo = load_config(REPO / "config" / "config.yaml")
    plan = yaml.safe_load((REPO / "config" / "experiments.example.yaml").read_text())
    paper = load_config(REPO / "config" / "config.yaml", overrides=plan)
    signed = {"demo": stable_hash(model_settings(demo["pretrain"]))}
    signed |= {
        name: stable_hash(model_settings(r.pretrain)) for name, r in plan_runs(paper).items()
    }
    assert signed == recorded


def test_a_key_added_since_the_first_runs_signs_only_away_from_its_default():
    """Every ``pretrain`` key is operational, signed since the start, or signed only where it
    differs from the schema's default (in its signed form): no hand-written line per key."""
    from damt.config import schema_defaults
    from damt.training.launch.signature import (
        OPERATIONAL_KEYS,
        SIGNED_SINCE_THE_START,
        model_settings,
    )

    defaults = schema_defaults("pretrain")
    augment = defaults["augment"]
    assert set(defaults) >= OPERATIONAL_KEYS | SIGNED_SINCE_THE_START
    later = set(defaults) - OPERATIONAL_KEYS - SIGNED_SINCE_THE_START
    assert {"nodes", "accumulate_steps", "curriculum", "augment", "contrastive", "ema"} <= later
    assert not later & set(model_settings(defaults)) and "subjects" not in model_settings(defaults)
    changed = {
        "nodes": 2, "accumulate_steps": 4, "subset_size": 10,
        "curriculum": [{"until_epoch": 1, "tasks": ["mim"]}],
        "augment": {**augment, "elastic": {**augment["elastic"], "prob": 0.5}},
        "contrastive": {**defaults["contrastive"], "method": "vicreg"},
        "ema": {**defaults["ema"], "enabled": True},
    }  # fmt: skip
    assert set(changed) == later
    for key, value in changed.items():
        signed = model_settings({**defaults, key: value})
        assert signed != model_settings(defaults), key
    # The projector signs where it is not the linear head every earlier run had, whatever
    # the method.
    mlp = {**defaults["contrastive"], "projector": "mlp"}
    assert model_settings({**defaults, "contrastive": mlp})["contrastive"] == {"projector": "mlp"}
    vicreg = {**changed["contrastive"], "vicreg": defaults["contrastive"]["vicreg"]}
    assert "projector" not in model_settings({**defaults, "contrastive": vicreg})["contrastive"]
    assert model_settings({**defaults, "contrastive": {**vicreg, "projector": "mlp"}})[
        "contrastive"
    ] == {"method": "vicreg", "vicreg": defaults["contrastive"]["vicreg"], "projector": "mlp"}
    # Only the part a model depends on: an augmentation at probability 0, an EMA switched off.
    off = {**defaults["ema"], "momentum": 0.5}
    assert model_settings({**defaults, "ema": off}) == model_settings(defaults)
    assert set(model_settings({**defaults, **{"augment": changed["augment"]}})["augment"]) == {
        "elastic"
    }
