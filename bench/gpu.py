"""The GPU path in one command: training step configurations, memory, profile, loader, torchrun.

On one GPU (the full preset at 128³, bf16; about 7 minutes on one H100):

    python bench/gpu.py --out bench/.work/gpu [--work /scratch/damt-gpu]

On a CPU the same code runs on the tiny preset in about 1.5 minutes on 2 cores
(tests/test_bench_gpu.py):

    python bench/gpu.py --tiny

Sections, each printed as it runs and appended to ``OUT/results.jsonl``:

1. ``step``: the trainer's ``train_step`` (bench/train.py's ``measure_step``: fused AdamW, bf16
   autocast on GPUs) per configuration: window 7 (preset ``full``) vs 8 (``full_w8``), MONAI vs
   SDPA attention, batch 2/4/8 per GPU, gradient checkpointing on/off: samples/s, step time,
   peak memory, model FLOPs per step (``FlopCounterMode``) and MFU against the GPU's dense bf16
   peak. The fastest configuration that fits is the *chosen* one.
2. ``max_batch``: the largest batch per GPU that fits, from the chosen family's memory per sample,
   checked by running it.
3. ``profile``: where the chosen step's time goes (top kernels, ``torch.profiler``), written to
   ``OUT/profile.txt``.
4. ``loader``: the data path alone (training-cache read + views + masks, ``PretrainDataset`` in a
   ``DataLoader``), samples/s per ``num_workers``; ``fed``: the chosen step fed by that loader
   (pinned memory, non-blocking copies): the share of the step the GPU waits for data.
5. ``torchrun``: a real ``damt train`` under ``torchrun`` (NCCL on GPUs, gloo on CPUs): trains,
   is killed after its first checkpoint, resumes, finishes and exports ``encoder.safetensors``.
6. ``compile``: the chosen configuration under ``torch.compile`` (``bench/train.py --compile``
   in a process of its own, stopped at the budget; GPU only, ``--compile`` forces it on a CPU,
   where compiling takes minutes).

A section that would not finish within ``--budget-s`` is skipped, and says so. The last line is
``samples_per_s=… mfu=… peak_mem_gb=… loader_samples_per_s=…`` of the chosen configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from train import Harness, Widths, measure_step, peak_flops, settings_for

from damt.demo.training_set import write_training_set
from damt.training.checkpoint import LATEST
from damt.training.data import PretrainDataset, load_training_data
from damt.training.settings import TrainSettings

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    """One measured training-step configuration."""

    preset: str
    attention: str
    batch: int
    checkpointing: bool
    compile: bool = False

    @property
    def name(self) -> str:
        return (
            f"{self.preset}/{self.attention}/b{self.batch}"
            f"/{'ckpt' if self.checkpointing else 'nockpt'}{'/compile' if self.compile else ''}"
        )


@dataclass
class Mode:
    """What the run measures: the GPU plan, or its CPU-sized twin."""

    device: torch.device
    configs: list[Config]
    preset_overrides: dict = field(default_factory=dict)
    steps: int = 5
    warmup: int = 2
    profile_steps: int = 3
    workers: tuple[int, ...] = (0, 4, 8, 16)
    loader_samples: int = 48
    cache_shape: tuple[int, int, int] = (144, 176, 144)  # a 1.25 mm cache volume
    train_preset: str = "full_w8"
    cache_subjects: int = 16
    widths: Widths = field(default_factory=Widths)  # the original data's head widths


def gpu_mode(device: torch.device) -> Mode:
    configs = [
        Config("full", "monai", 2, True),  # the original: window 7, MONAI attention
        Config("full", "sdpa", 2, True),
        Config("full_w8", "monai", 2, True),
        Config("full_w8", "sdpa", 2, True),
        Config("full_w8", "sdpa", 4, True),
        Config("full_w8", "sdpa", 8, True),
        Config("full_w8", "sdpa", 2, False),
        Config("full_w8", "sdpa", 4, False),
        Config("full_w8", "sdpa", 8, False),
    ]
    return Mode(device, configs)


def cpu_mode(device: torch.device) -> Mode:
    # The tiny preset (window 4) stands in for both windows: the code path is the same.
    configs = [Config("tiny", "monai", 1, False), Config("tiny", "sdpa", 1, False)]
    return Mode(
        device,
        configs,
        steps=1,
        warmup=1,
        profile_steps=1,
        workers=(0, 1),
        loader_samples=4,
        cache_shape=(72, 80, 72),
        train_preset="tiny",
        cache_subjects=2,
        widths=Widths(morphometry=12, radiomics=6, classes=6),
    )


class Recorder:
    """Prints each result and appends it to ``results.jsonl``; keeps the time budget."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.jsonl"
        self.path.write_text("")
        self.start = time.monotonic()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def record(self, section: str, **values) -> dict:
        row = {"section": section, "t_s": round(time.monotonic() - self.start, 1), **values}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()}
        print(f"[{row['t_s']:6.1f} s] {section}: {shown}", flush=True)
        return row

    def guard(self, section: str, fn, *args):
        """Run one section; an exception is recorded (and the other sections still run)."""
        try:
            return fn(*args)
        except Exception as exc:  # a benchmark reports every failure and goes on
            self.record(section, error=f"{type(exc).__name__}: {exc}"[:2000])
        _free(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        return None

    def skip(self, section: str, need_s: float) -> bool:
        """True (and recorded) when fewer than ``need_s`` seconds of the budget are left."""
        if self.left() >= need_s:
            return False
        self.record(section, skipped=f"needs ~{need_s:.0f} s, {max(self.left(), 0):.0f} s left")
        return True


def environment(device: torch.device) -> dict:
    """Card, driver, torch/CUDA versions, CPU cores and date of the run."""
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_mem_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            info["driver"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["driver"] = f"unknown ({exc})"
    return info


def _free(device: torch.device) -> None:
    gc.collect()  # a failed section's frames may still hold its model
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def warm_harness(mode: Mode, cfg: Config) -> tuple[TrainSettings, Harness]:
    """The settings and a warmed-up step of ``cfg`` (one warm-up, one step), for later use."""
    settings = settings_for(
        cfg.preset, cfg.batch, checkpointing=cfg.checkpointing, **mode.preset_overrides
    )
    _, harness = measure_step(
        settings, mode.device, batch_size=cfg.batch, attention=cfg.attention, steps=1,
        warmup=1, widths=mode.widths, log=lambda _line: None,
    )  # fmt: skip
    return settings, harness


def run_config(mode: Mode, cfg: Config, rec: Recorder, flops_cache: dict) -> dict | None:
    """Measure one configuration; an out-of-memory is recorded as such."""
    overrides = {**mode.preset_overrides, "checkpointing": cfg.checkpointing}
    settings = settings_for(cfg.preset, cfg.batch, **overrides)
    try:
        metrics, harness = measure_step(
            settings,
            mode.device,
            batch_size=cfg.batch,
            attention=cfg.attention,
            compile=cfg.compile,
            steps=mode.steps,
            warmup=mode.warmup,
            widths=mode.widths,
            log=lambda _line: None,
        )
        # FLOPs are linear in the batch and the same for either attention: count once per
        # preset and checkpointing (which adds the recomputed forward: hardware, not model,
        # FLOPs) at the first batch size, and scale by the batch.
        key = (cfg.preset, cfg.checkpointing)
        if key not in flops_cache:
            flops_cache[key] = (harness.flops(), cfg.batch)
        flops, batch = flops_cache[key]
        metrics["tflop_per_step"] = flops * cfg.batch / batch / 1e12
        metrics["achieved_tflops"] = metrics["tflop_per_step"] / metrics["step_time_s"]
        peak = peak_flops(mode.device)
        metrics["mfu"] = metrics["achieved_tflops"] * 1e12 / peak if peak else None
        del harness
    except torch.OutOfMemoryError:
        _free(mode.device)
        rec.record("step", config=cfg.name, **asdict(cfg), oom=True)
        return None
    _free(mode.device)
    return rec.record("step", config=cfg.name, **asdict(cfg), window=settings.encoder.window,
                      **metrics)  # fmt: skip


def max_batch(mode: Mode, chosen: dict, rows: list[dict], rec: Recorder) -> None:
    """The largest batch per GPU that fits: memory ≈ a + b·batch, then checked by a run."""
    family = [
        r
        for r in rows
        if r["preset"] == chosen["preset"]
        and r["attention"] == chosen["attention"]
        and r["checkpointing"] == chosen["checkpointing"]
        and r.get("peak_mem_gib")
    ]
    if len(family) < 2:
        rec.record("max_batch", skipped="fewer than two measured batch sizes")
        return
    batches, memory = [r["batch"] for r in family], [r["peak_mem_gib"] for r in family]
    slope, intercept = np.polyfit(batches, memory, 1)
    total = torch.cuda.get_device_properties(mode.device).total_memory / 2**30
    # 5 % headroom for the allocator's fragmentation.
    predicted = int((0.95 * total - intercept) / slope)
    cfg = Config(chosen["preset"], chosen["attention"], predicted, chosen["checkpointing"])
    row = run_config(Mode(mode.device, [], steps=2, warmup=1, widths=mode.widths), cfg, rec, {})
    rec.record(
        "max_batch",
        preset=cfg.preset,
        checkpointing=cfg.checkpointing,
        gib_per_sample=slope,
        gib_fixed=intercept,
        predicted=predicted,
        fits=row is not None,
        samples_per_s=row["samples_per_s"] if row else None,
    )


def profile(mode: Mode, cfg: Config, rec: Recorder) -> None:
    """Top kernels of the chosen step (``mode.profile_steps`` profiled steps after the warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    _, harness = warm_harness(mode, cfg)
    activities = [ProfilerActivity.CPU]
    if mode.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        for i in range(mode.profile_steps):
            harness.step(i)
        _free(mode.device)
    attr = "self_device_time_total" if mode.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=attr, row_limit=25, max_name_column_width=60)
    (rec.out / "profile.txt").write_text(f"{cfg.name}, {mode.profile_steps} steps\n{table}\n")
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events)
    top = [{"name": e.key[:80], "share": round(getattr(e, attr) / total, 4)} for e in events[:12]]
    rec.record("profile", config=cfg.name, top=top)
    del harness
    _free(mode.device)


def write_cache(root: Path, mode: Mode) -> Path:
    """A synthetic training set (cache, manifest, tables, label table) with ``mode``'s widths."""
    w = mode.widths
    files = write_training_set(
        root, n_subjects=mode.cache_subjects, shape=mode.cache_shape, n_classes=w.classes,
        widths=(w.morphometry - w.radiomics, w.radiomics, w.radiomics),
    )  # fmt: skip
    return files.root


def loader_rates(mode: Mode, cfg: Config, root: Path, rec: Recorder) -> dict[int, float]:
    """samples/s of the data path alone (first batch excluded) per ``num_workers``."""
    settings = settings_for(cfg.preset, cfg.batch, **mode.preset_overrides)
    data = load_training_data(root / "manifest.parquet", root / "labels.tsv", {})
    dataset = PretrainDataset(data, settings.views, seed=0)
    rates = {}
    for workers in mode.workers:
        if workers > (os.cpu_count() or 1):
            continue
        order = [i % len(dataset) for i in range(mode.loader_samples)]
        loader = DataLoader(dataset, batch_size=cfg.batch, sampler=order, num_workers=workers)
        seen, first = 0, None
        for batch in loader:
            if first is None:
                first = time.perf_counter()
            else:
                seen += len(batch["index"])
        rate = seen / (time.perf_counter() - first) if seen else float("nan")
        rates[workers] = rate
        rec.record("loader", num_workers=workers, batch=cfg.batch, samples_per_s=rate)
    return rates


def fed(mode: Mode, cfg: Config, root: Path, workers: int, rec: Recorder) -> None:
    """The chosen step fed by the real loader: the share of the time spent waiting for data."""
    settings, harness = warm_harness(mode, cfg)
    data = load_training_data(
        root / "manifest.parquet",
        root / "labels.tsv",
        {g: root / "features" / f for g, f in _tables(root).items()},
    )
    dataset = PretrainDataset(data, settings.views, seed=0)
    steps = mode.steps * 2
    order = [i % len(dataset) for i in range((steps + 1) * cfg.batch)]
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch,
        sampler=order,
        num_workers=workers,
        pin_memory=mode.device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )
    cuda = mode.device.type == "cuda"
    waits, totals = [], []
    it = iter(loader)
    next(it)  # worker start-up is not steady state
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(it)
        batch = {k: v.to(mode.device, non_blocking=True) for k, v in batch.items()}
        waited = time.perf_counter() - start
        harness.batches = [{k: v for k, v in batch.items() if k != "index"}]
        harness.step()
        if cuda:
            torch.cuda.synchronize()
        waits.append(waited)
        totals.append(time.perf_counter() - start)
    rec.record(
        "fed",
        config=cfg.name,
        num_workers=workers,
        step_time_s=statistics.median(totals),
        wait_s=statistics.median(waits),
        gpu_idle_share=sum(waits) / sum(totals),
    )
    del harness
    _free(mode.device)


def _tables(root: Path) -> dict[str, str]:
    from damt.features import FEATURE_GROUPS
    from damt.paths import normalized_table_file

    return {g: normalized_table_file(g) for g in FEATURE_GROUPS}


def torchrun_train(mode: Mode, root: Path, rec: Recorder) -> None:
    """A real ``damt train`` under torchrun, killed after its first checkpoint, resumed to the
    end and exported."""
    cuda = mode.device.type == "cuda"
    run_dir = root / "run"
    pretrain = {
        "preset": mode.train_preset,
        "presets": {mode.train_preset: dict(mode.preset_overrides)},
        "epochs": 3,
        "warmup_epochs": 1,
        "batch_size_per_gpu": 2,
        "gpus": 1 if cuda else 0,
        "num_workers": 2 if cuda else 0,
        "save_every": 1,
        "log_every_steps": 1,
        "contrastive_dim": 64,
    }
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"subjects": {"dirs": [{"path": str(root)}]},
                                      "pretrain": pretrain}))  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        "--nproc-per-node=1", "-m", "damt", "train", "--config", str(config),
        "--manifest", str(root / "manifest.parquet"), "--label-table", str(root / "labels.tsv"),
        "--tables-dir", str(root / "features"), "--out", str(run_dir),
    ]  # fmt: skip
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    log = (rec.out / "torchrun.log").open("w")
    start = time.perf_counter()
    first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
    latest = run_dir / "checkpoints" / LATEST
    while first.poll() is None and not latest.exists():
        time.sleep(0.5)
    killed = first.poll() is None
    if killed:
        os.killpg(first.pid, signal.SIGKILL)  # a kill: SIGTERM would stop it with a checkpoint
    first.wait()
    first_s = time.perf_counter() - start
    epochs_before = torch.load(latest, map_location="cpu", weights_only=True)["epoch"]
    start = time.perf_counter()
    second = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rec.record(
        "torchrun",
        backend="nccl" if cuda else "gloo",
        killed_after_epoch=epochs_before if killed else None,
        first_s=first_s,
        resume_s=time.perf_counter() - start,
        resume_rc=second.returncode,
        epochs_logged=sorted({r["epoch"] for r in records if "epoch" in r}),
        exported=(run_dir / "encoder.safetensors").is_file(),
    )
    if second.returncode != 0:
        raise RuntimeError(f"damt train under torchrun failed; see {rec.out / 'torchrun.log'}")


def compiled_step(cfg: Config, rec: Recorder) -> dict:
    """``bench/train.py --compile`` for ``cfg``, stopped when the budget runs out."""
    command = [
        sys.executable, str(Path(__file__).with_name("train.py")), "--preset", cfg.preset,
        "--batch-size", str(cfg.batch), "--attention", cfg.attention, "--compile",
        "--steps", "3", "--warmup", "2", "--no-flops",
    ] + ([] if cfg.checkpointing else ["--no-checkpointing"])  # fmt: skip
    limit = max(rec.left(), 1)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        unfinished = f"not done (compiling, 2 warm-up + 3 steps) after {limit:.0f} s"
        return rec.record("compile", config=cfg.name, unfinished=unfinished)
    values = dict(
        part.split("=", 1)
        for line in done.stdout.splitlines()
        for part in line.split()
        if part.startswith(("samples_per_s=", "peak_memory_gib=", "nonfinite_steps="))
    )
    if done.returncode or "samples_per_s" not in values:
        raise RuntimeError(f"bench/train.py --compile failed: {done.stderr[-1500:]}")
    return rec.record(
        "compile", config=f"{cfg.name}/compile", **asdict(cfg) | {"compile": True},
        samples_per_s=float(values["samples_per_s"]),
        peak_mem_gib=float(values["peak_memory_gib"]) if "peak_memory_gib" in values else None,
        nonfinite_steps=int(values.get("nonfinite_steps", "0")),
        wall_s=time.perf_counter() - start,
    )  # fmt: skip


SECTIONS = ("torchrun", "step", "max_batch", "profile", "loader", "fed", "compile")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU-sized run of the same code")
    p.add_argument("--out", type=Path, help="results folder (default: a temporary one)")
    p.add_argument("--budget-s", type=float, help="skip sections past this (GPU 450, CPU 300)")
    p.add_argument("--work", type=Path, help="synthetic cache and training run (default: OUT/data)")
    p.add_argument("--compile", action="store_true", help="also compile on a CPU")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--configs", help="comma-separated subset of the step configurations' names")
    args = p.parse_args()
    sections = set(args.sections.split(","))
    if sections - set(SECTIONS):
        p.error(f"unknown sections {sorted(sections - set(SECTIONS))}; known: {SECTIONS}")
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    mode = gpu_mode(device) if cuda else cpu_mode(device)
    if args.configs:
        wanted = args.configs.split(",")
        mode.configs = [c for c in mode.configs if c.name in wanted]
        if not mode.configs:
            known = [c.name for c in (gpu_mode if cuda else cpu_mode)(device).configs]
            p.error(f"--configs {args.configs}: none of {known}")
    if not cuda:
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    torch.backends.cudnn.benchmark = True
    out = args.out or Path(tempfile.mkdtemp(prefix="damt-gpu-bench-"))
    rec = Recorder(out, args.budget_s or (450 if cuda else 300))
    rec.record("environment", **environment(device))
    root = write_cache(args.work or out / "data", mode)

    # 5 (first, while this process holds no GPU memory): torchrun, checkpoint, kill, resume, export
    if "torchrun" in sections and not rec.skip("torchrun", 90 if cuda else 15):
        rec.guard("torchrun", torchrun_train, mode, root, rec)

    # 1. training-step configurations
    rows, flops_cache = [], {}
    for cfg in mode.configs if "step" in sections else []:
        if rec.skip("step", 20 if cuda else 5):
            break
        row = rec.guard("step", run_config, mode, cfg, rec, flops_cache)
        if row is not None:
            rows.append(row)
    fitting = [r for r in rows if r["nonfinite_steps"] == 0] or rows
    best = max(fitting, key=lambda r: r["samples_per_s"], default=None)
    if best is not None:
        chosen = Config(best["preset"], best["attention"], best["batch"], best["checkpointing"])
    elif "step" in sections:
        raise SystemExit("no training-step configuration ran; see the records above")
    else:  # later sections use the first configuration, unmeasured
        chosen = mode.configs[0]
    rec.record("chosen", config=chosen.name, measured=best is not None)

    # 2-3. the largest batch, where the time goes
    if best and cuda and "max_batch" in sections and not rec.skip("max_batch", 60):
        rec.guard("max_batch", max_batch, mode, best, rows, rec)
    if "profile" in sections and not rec.skip("profile", 30 if cuda else 10):
        rec.guard("profile", profile, mode, chosen, rec)

    # 4. the loader alone, then feeding the chosen step
    rates = {0: float("nan")}
    if "loader" in sections:
        rates = rec.guard("loader", loader_rates, mode, chosen, root, rec) or rates
    workers = max(rates, key=lambda w: rates[w])
    if "fed" in sections and not rec.skip("fed", 40 if cuda else 10):
        rec.guard("fed", fed, mode, chosen, root, workers if "loader" in sections else 8, rec)

    # 6. compiled, in a process of its own so a long compilation cannot outrun the budget
    compile_on = (cuda or args.compile) and "compile" in sections
    if compile_on and not rec.skip("compile", 60):
        row = rec.guard("compile", compiled_step, chosen, rec)
        measured = row is not None and "samples_per_s" in row
        faster = measured and (best is None or row["samples_per_s"] > best["samples_per_s"])
        if faster and row["nonfinite_steps"] == 0:
            best = row

    def fmt(key: str, digits: str, scale: float = 1.0) -> str:
        value = best.get(key) if best else None
        return "n/a" if value is None else f"{value * scale:{digits}}"

    print(
        f"samples_per_s={fmt('samples_per_s', '.4g')} mfu={fmt('mfu', '.3f')} "
        f"peak_mem_gb={fmt('peak_mem_gib', '.2f', 2**30 / 1e9)} "
        f"loader_samples_per_s={rates[workers]:.4g}"
    )


if __name__ == "__main__":
    main()
