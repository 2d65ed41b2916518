"""Benchmark of one DAMT training step: step time and samples/s; on a GPU also peak memory,
model FLOPs and model FLOPs utilisation (MFU).

It times ``damt.training.step.train_step`` (forward of the seven tasks, backward, clipping,
AdamW) on batches made by ``make_views`` from synthetic volumes; data loading is not timed.
Head widths default to the original DAMT data (566 morphometry, 72 radiomics, 101 atlas classes).

    python bench/train.py --preset tiny
    python bench/train.py --preset full --crop 64 --local-crop 64 --steps 3   # CPU-sized
    python bench/train.py --preset full                                       # GPU: 128³, bf16
    python bench/train.py --preset full --no-checkpointing
    python bench/train.py --preset full --window 8
    python bench/train.py --padding-table                                     # shapes only
    python bench/train.py --preset tiny --methods     # ntxent vs vicreg vs dino, one process

With ``--methods`` the step of each contrastive method (``pretrain.contrastive.method``) is
timed in turn, in one process, and the ratios to ``ntxent`` are printed; dino's step includes
the teacher's forward and its EMA update.

The last line printed is ``samples_per_s=X`` (per process, i.e. per GPU).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import default_collate

from damt.config import validate_config
from damt.model.network import DAMTNetwork
from damt.model.spec import N_STAGES, NetworkSpec
from damt.training.objective import PretrainObjective
from damt.training.settings import TrainSettings
from damt.training.step import param_groups, resolve_precision, train_step
from damt.training.views import ROTATIONS, make_views

# Dense bf16/fp16 tensor-core peaks (FLOP/s) used for MFU; --peak-tflops overrides.
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def settings_for(
    preset: str,
    batch_size: int = 2,
    precision: str = "auto",
    contrastive: dict | None = None,
    **overrides,
) -> TrainSettings:
    """The trainer's settings for ``preset`` with some of its entries overridden
    (``contrastive``: the ``pretrain.contrastive`` section)."""
    pretrain = {
        "preset": preset,
        "presets": {preset: overrides},
        "batch_size_per_gpu": batch_size,
        "precision": precision,
        "epochs": 2,
        "warmup_epochs": 0,
        "contrastive": contrastive or {},
    }
    config = validate_config({"subjects": {"dirs": [{"path": "."}]}, "pretrain": pretrain})
    return TrainSettings.from_config(config)


def overrides_from(args: argparse.Namespace) -> dict:
    """Preset entries the command line overrides."""
    preset: dict = {}
    if args.crop:
        preset["global_crop"] = args.crop
    if args.local_crop:
        preset["local_crop"] = args.local_crop
        preset["local_crop_source"] = args.local_crop * 7 // 8
    if args.window:
        preset["window"] = args.window
    if args.no_checkpointing:
        preset["checkpointing"] = False
    return preset


@dataclass(frozen=True)
class Widths:
    """Data-dependent head widths (default: the original DAMT data)."""

    morphometry: int = 566
    radiomics: int = 72
    classes: int = 101


def synthetic_batch(
    settings: TrainSettings, batch_size: int, widths: Widths, rng: np.random.Generator
) -> dict:
    """A batch of views of smooth random 'brains' with random regression targets."""
    size = settings.views.global_crop + 16
    items = []
    for _ in range(batch_size):
        coarse = rng.random((8, 8, 8))
        image = np.kron(coarse, np.ones((size // 8 + 1,) * 3))[:size, :size, :size]
        atlas = (image * (widths.classes - 1)).astype(np.int64)
        item = make_views(image.astype(np.float16), atlas, rng, settings.views)
        item["morphometry"] = torch.randn(widths.morphometry)
        item["radiomics"] = torch.randn(widths.radiomics)
        items.append(item)
    return default_collate(items)


def build_objective(
    settings: TrainSettings, widths: Widths, attention: str, device: torch.device
) -> PretrainObjective:
    """The trainer's objective (network + balancer + the contrastive method's state) for
    ``settings``, seeded, on ``device``."""
    spec = NetworkSpec(
        encoder=settings.encoder, tasks=settings.tasks, n_rotations=len(ROTATIONS),
        n_locations=settings.views.n_locations, contrastive_dim=settings.contrastive_dim,
        morphometry_dim=widths.morphometry, radiomics_dim=widths.radiomics,
        n_atlas_classes=widths.classes, contrastive_projector=settings.contrastive.projector,
    )  # fmt: skip
    torch.manual_seed(0)
    network = DAMTNetwork(spec, attention)
    return PretrainObjective(
        network, settings.balancing, 0.5, settings.contrastive, settings.ema
    ).to(device)


# The teacher's momentum in the timed steps (its value does not change the cost).
TEACHER_MOMENTUM = 0.996


@dataclass
class Harness:
    """What a measured step ran with, for a FLOP count or a profile of the same step."""

    objective: PretrainObjective
    model: torch.nn.Module  # the objective, or its compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: list[dict]
    precision: str

    def step(self, i: int = 0, model: torch.nn.Module | None = None):
        """One ``train_step`` on batch ``i`` (mod the batches held), then the EMA teacher's
        update where there is one (as the trainer does after an applied step)."""
        out = train_step(
            model or self.model,
            self.optimizer,
            self.scaler,
            self.batches[i % len(self.batches)],
            self.precision,
            1.0,
        )
        if out.applied:
            self.objective.update_teacher(TEACHER_MOMENTUM)
        return out

    def flops(self) -> int:
        """Model FLOPs of one step (forward + backward, eager), counted by ``FlopCounterMode``."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.step(model=self.objective)
        return counter.get_total_flops()


def measure_step(
    settings: TrainSettings,
    device: torch.device,
    *,
    batch_size: int,
    attention: str = "sdpa",
    compile: bool = False,
    steps: int = 5,
    warmup: int = 2,
    widths: Widths = Widths(),
    log=print,
) -> tuple[dict, Harness]:
    """Time the trainer's ``train_step`` (fused AdamW on GPUs, as the trainer) on two synthetic
    batches: step time (median), samples/s, peak memory (GPU) and non-finite steps.
    """
    precision = resolve_precision(settings.precision, device)
    objective = build_objective(settings, widths, attention, device)
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(settings, batch_size, widths, rng) for _ in range(2)]
    h = Harness(
        objective=objective,
        model=torch.compile(objective) if compile else objective,
        optimizer=torch.optim.AdamW(param_groups(objective), lr=1e-4, fused=device.type == "cuda"),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        batches=[{k: v.to(device) for k, v in b.items()} for b in batches],
        precision=precision,
    )
    use_cuda = device.type == "cuda"

    def sync() -> None:
        if use_cuda:
            torch.cuda.synchronize()

    nonfinite = 0
    start = time.perf_counter()
    for i in range(warmup):
        nonfinite += not h.step(i).applied
    sync()
    warmup_s = time.perf_counter() - start
    if use_cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        start = time.perf_counter()
        out = h.step(i)
        sync()
        times.append(time.perf_counter() - start)
        nonfinite += not out.applied
        log(f"  step {i}: {times[-1]:.3f} s, loss {float(out.total):.4g}")
    step_time = statistics.median(times)
    metrics = {
        "step_time_s": step_time,
        "step_time_mean_s": statistics.mean(times),
        "samples_per_s": batch_size / step_time,
        "warmup_s": warmup_s,
        "nonfinite_steps": nonfinite,
        "precision": precision,
        "params_m": sum(p.numel() for p in objective.parameters()) / 1e6,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if use_cuda else None,
    }
    return metrics, h


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """The device's dense bf16 peak (FLOP/s) for MFU, or None when unknown (CPUs)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_FLOPS.items() if key in name), None)


def window_padding_table(depths, embed_dim, patch) -> list[str]:
    """Tokens per stage with and without window padding, and the encoder FLOPs it wastes.

    MONAI pads each block's input to a multiple of the window for attention (qkv, scores,
    projection) and crops it again before the MLP. A stage no larger than the window uses
    one window of its own size, unshifted.
    """
    rows = [
        "| crop | window | tokens per stage (attention grid) | encoder GFLOP/sample | "
        "of which padding | decoders OK |",
        "|---|---|---|---|---|---|",
    ]
    for crop, window in ((128, 7), (112, 7), (128, 8), (96, 7), (128, 4)):
        grids, total, wasted = [], 0.0, 0.0
        for i, depth in enumerate(depths):
            n = crop / patch / 2**i
            c = embed_dim * 2**i
            w = min(window, math.ceil(n))
            padded = math.ceil(n / w) * w
            grids.append(f"{n:g}³" + (f"→{padded}³" if padded != n else ""))
            attention = 8 * c * c + 4 * w**3 * c  # qkv + proj, QKᵀ and AV per token (×2 FLOP)
            mlp = 16 * c * c
            flops = depth * (padded**3 * attention + n**3 * mlp)
            total += flops
            wasted += depth * (padded**3 - n**3) * attention
        ok = "yes" if crop % (patch * 2**N_STAGES) == 0 else f"no ({crop} % 32 ≠ 0)"
        rows.append(
            f"| {crop}³ | {window} | {', '.join(grids)} | {3 * total / 1e9:.0f} | "
            f"{100 * wasted / total:.0f} % | {ok} |"
        )
    rows.append("(GFLOP: forward + backward ≈ 3× forward, Swin blocks only, one view.)")
    return rows


def compare_methods(args: argparse.Namespace, device: torch.device, widths: Widths) -> None:
    """Median step time of each contrastive method and its ratio to ``ntxent``'s: the three
    objectives are built (and warmed up) first, then timed in interleaved rounds, so a change
    of the machine's load falls on all three alike."""
    harnesses = {}
    for method in ("ntxent", "vicreg", "dino"):
        settings = settings_for(
            args.preset, args.batch_size, args.precision, {"method": method},
            **overrides_from(args),
        )  # fmt: skip
        r, harnesses[method] = measure_step(
            settings, device, batch_size=args.batch_size, attention=args.attention,
            compile=args.compile, steps=1, warmup=args.warmup, widths=widths, log=lambda _: None,
        )  # fmt: skip
        print(f"method={method} params={r['params_m']:.2f}M")
    times: dict[str, list[float]] = {m: [] for m in harnesses}
    for i in range(args.steps):
        for method, h in harnesses.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = h.step(i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[method].append(time.perf_counter() - start)
            if not out.applied:
                print(f"  {method} step {i}: not applied (non-finite)")
    base = statistics.median(times["ntxent"])
    for method, seconds in times.items():
        median = statistics.median(seconds)
        print(
            f"{method}: median {median:.3f} s/step (min {min(seconds):.3f}, "
            f"{len(seconds)} steps), {median / base:.3f} x ntxent"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["tiny", "full", "full_w8"], default="tiny")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=2, help="per process")
    p.add_argument("--crop", type=int, help="global crop (default: the preset's)")
    p.add_argument("--local-crop", type=int, help="local crop (source = 7/8 of it)")
    p.add_argument("--window", type=int, help="Swin window (default: the preset's)")
    p.add_argument("--no-checkpointing", action="store_true", help="no gradient checkpointing")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--attention", choices=["sdpa", "monai"], default="sdpa")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--classes", type=int, default=101, help="atlas classes K")
    p.add_argument("--morphometry", type=int, default=566, help="morphometry width")
    p.add_argument("--radiomics", type=int, default=72, help="radiomics width")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (TFLOP/s)")
    p.add_argument("--padding-table", action="store_true", help="print the window-padding table")
    p.add_argument(
        "--methods", action="store_true", help="time ntxent, vicreg and dino; print the ratios"
    )
    args = p.parse_args()

    settings = settings_for(args.preset, args.batch_size, args.precision, **overrides_from(args))
    enc = settings.encoder
    if args.padding_table:
        print("\n".join(window_padding_table(enc.depths, enc.embed_dim, enc.patch)))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    widths = Widths(args.morphometry, args.radiomics, args.classes)
    if args.methods:
        compare_methods(args, device, widths)
        return
    v = settings.views
    print(
        f"device={device} ({torch.cuda.get_device_name() if use_cuda else 'CPU'}, "
        f"{torch.get_num_threads()} threads) preset={args.preset} embed={enc.embed_dim} "
        f"depths={list(enc.depths)} window={enc.window} crops={v.global_crop}³/{v.local_crop}³ "
        f"batch={args.batch_size} attention={args.attention} checkpointing={enc.checkpointing} "
        f"compile={args.compile}"
    )
    r, harness = measure_step(
        settings, device, batch_size=args.batch_size, attention=args.attention,
        compile=args.compile, steps=args.steps, warmup=args.warmup, widths=widths,
    )  # fmt: skip
    print(f"precision={r['precision']} params={r['params_m']:.1f}M")
    print(f"step_time_s median={r['step_time_s']:.3f} mean={r['step_time_mean_s']:.3f}")
    print(f"nonfinite_steps={r['nonfinite_steps']} of {args.warmup + args.steps}")
    if r["peak_mem_gib"] is not None:
        print(f"peak_memory_gib={r['peak_mem_gib']:.2f}")
    if not args.no_flops:
        flops = harness.flops()
        achieved = flops / r["step_time_s"]
        print(f"model_tflop_per_step={flops / 1e12:.3f} achieved_tflops={achieved / 1e12:.3f}")
        peak = peak_flops(device, args.peak_tflops)
        if peak:
            print(f"mfu={achieved / peak:.3f} (peak {peak / 1e12:.0f} TFLOP/s)")
    print(f"samples_per_s={r['samples_per_s']:.4f}")


if __name__ == "__main__":
    main()
