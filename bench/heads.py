"""Fixed-batch check of every pretext head (issue 25, item 1a): can each task memorise one batch?

A few subjects' views (``damt.training.data.PretrainDataset``, the trainer's own sampling) are
drawn once and shown every step. A head whose signal (``damt.training.signals``, the epoch
signals computed on that one batch) does not reach its level on a batch it sees over and over
has a bug in its path from views to labels (or a documented limit); one that does can learn.
Each task is trained alone (equal weighting), then all seven together (the configured
balancing), each from the same random initialisation:

    python bench/heads.py --results results            # the workflow's outputs (manifest, ...)
    python bench/heads.py --results results --steps 200 --lr 1e-3 --batch 4
    python bench/heads.py --results results --tasks atlas --no-joint --atlas-groups 8

It prints, per run and task, the first step at which the level was reached (or "not reached")
and the last signal; ``--out`` also writes ``heads.jsonl`` (every step's signals).

``--fresh`` asks the other question (issue 25, item 1b): trained on fresh views of the training
subjects every step (the trainer's stream: epoch by epoch), does a task score above its chance
level on views of the held-out subjects it never saw? Every ``--eval-every`` steps it scores
``--eval-draws`` view draws of each held-out subject (unaugmented, eval mode) and prints the
signal against its chance level:

    python bench/heads.py --results results --tasks rotation --no-joint --fresh --steps 300
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import default_collate

from damt.config import load_config
from damt.model.network import DAMTNetwork
from damt.model.spec import TASKS
from damt.training.data import PretrainDataset, TrainingData
from damt.training.distributed import DistEnv
from damt.training.heldout import held_out_signals
from damt.training.inputs import TrainInputs
from damt.training.objective import PretrainObjective
from damt.training.run import CONFIG_SECTIONS, network_spec
from damt.training.settings import TrainSettings
from damt.training.signals import SIGNALS, epoch_signals
from damt.training.step import param_groups

# The level each head's signal must reach on the batch it sees every step (MIM: at most).
LEVELS = {
    "rotation": 0.95,
    "location": 0.95,
    "contrastive": 0.95,
    "atlas": 0.5,
    "morphometry": 0.9,
    "radiomics": 0.9,
    "mim": 0.5,
}


def reached(task: str, value: float | None) -> bool:
    if value is None:
        return False
    return value <= LEVELS[task] if task == "mim" else value >= LEVELS[task]


def fixed_batch(settings: TrainSettings, data: TrainingData, size: int, seed: int) -> dict:
    """``size`` samples of the training subjects' views, drawn once."""
    dataset = PretrainDataset(data, settings.views, seed)
    if len(dataset) < size:
        raise SystemExit(f"{len(dataset)} training subjects, fewer than the batch of {size}")
    return default_collate([dataset[i] for i in range(size)])


def merge_atlas_classes(batch: dict, groups: int) -> int:
    """Merge the batch's atlas classes into ``groups`` by voxel count (in place): the
    ``groups - 1`` largest alone (background first), all the others as the last group. Tells a
    decoder that cannot learn many small classes from one whose targets do not match its views:
    large classes are learnt only if target and image line up. Returns ``groups``."""
    atlases = ("global_atlas", "local_atlas")
    k = 1 + max(int(batch[key].max()) for key in atlases)
    counts = sum(torch.bincount(batch[key].long().flatten(), minlength=k) for key in atlases)
    rank = torch.empty(k, dtype=torch.long)
    rank[torch.argsort(counts, descending=True, stable=True)] = torch.arange(k)
    for key in atlases:
        batch[key] = rank.clamp(max=groups - 1)[batch[key].long()]
    return groups


def new_objective(
    settings: TrainSettings,
    data: TrainingData,
    tasks: tuple[str, ...],
    balancing: str,
    seed: int,
    n_atlas_classes: int | None = None,
) -> PretrainObjective:
    """The trainer's objective with only ``tasks`` on, from ``seed``'s initialisation
    (``n_atlas_classes``: of a merged batch)."""
    spec = replace(network_spec(settings, data), tasks=tasks)
    if n_atlas_classes is not None:
        spec = replace(spec, n_atlas_classes=n_atlas_classes)
    torch.manual_seed(seed)
    return PretrainObjective(
        DAMTNetwork(spec, settings.attention),
        balancing,
        settings.contrastive_temperature,
        settings.contrastive,
        settings.ema,
    )


def train_on_batch(
    settings: TrainSettings,
    data: TrainingData,
    batch: dict,
    tasks: tuple[str, ...],
    balancing: str,
    steps: int,
    lr: float,
    seed: int,
    n_atlas_classes: int | None = None,
) -> list[dict]:
    """``steps`` AdamW steps on ``batch`` with only ``tasks`` on; each step's signals (of the
    predictions before that step's update). ``n_atlas_classes``: of a merged batch."""
    objective = new_objective(settings, data, tasks, balancing, seed, n_atlas_classes)
    n_rotations = objective.network.spec.n_rotations
    optimizer = torch.optim.AdamW(param_groups(objective), lr=lr)
    history = []
    for step in range(steps):
        total, _, _, stats = objective(batch)
        signals = epoch_signals({k: v.detach() for k, v in stats.items()}, tasks, n_rotations)
        history.append(
            {
                "step": step,
                "loss": float(total.detach()),
                **{t: signals[f"signal/{SIGNALS[t]}"] for t in tasks},
            }
        )
        if all(reached(t, history[-1][t]) for t in tasks):
            break
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return history


# This process alone, on the CPU (damt.training.heldout scores the held-out views).
ALONE = DistEnv(0, 1, 0, 1, torch.device("cpu"))


def train_on_fresh_views(
    settings: TrainSettings,
    data: TrainingData,
    held_out: list[dict],
    tasks: tuple[str, ...],
    args: argparse.Namespace,
) -> list[dict]:
    """``args.steps`` AdamW steps on fresh batches of the training subjects' views; the
    held-out signals every ``args.eval_every`` steps and at the end."""
    objective = new_objective(settings, data, tasks, "equal", args.seed)
    optimizer = torch.optim.AdamW(param_groups(objective), lr=args.lr)
    dataset = PretrainDataset(data, settings.views, args.seed)
    order = torch.Generator().manual_seed(args.seed)
    history, epoch, queue = [], 0, []
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            signals = held_out_signals(objective, held_out, ALONE, "fp32")
            row = {"step": step}
            for t in tasks:
                row[t] = signals[f"eval_signal/{SIGNALS[t]}"]
                row[f"{t}_chance"] = signals[f"eval_chance/{SIGNALS[t]}"]
            history.append(row)
            print(
                f"step {step:4d} held-out "
                + " ".join(f"{t} {row[t]:.3f} (chance {row[f'{t}_chance']:.3f})" for t in tasks),
                flush=True,
            )
        if step == args.steps:
            break
        while len(queue) < args.batch:
            dataset.set_epoch(epoch)
            queue += [int(i) for i in torch.randperm(len(dataset), generator=order)]
            epoch += 1
        batch = default_collate([dataset[i] for i in queue[: args.batch]])
        queue = queue[args.batch :]
        total = objective(batch)[0]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return history


def fresh(args: argparse.Namespace, settings: TrainSettings, inputs: TrainInputs) -> None:
    """``--fresh``: each task alone on fresh views, scored on held-out subjects' views."""
    data = inputs.load(TASKS)
    held = inputs.load(TASKS, holdout=True)
    if not held.subjects:
        raise SystemExit("the manifest holds no subject out: nothing to score fresh views on")
    dataset = PretrainDataset(held, settings.views, args.seed + 1)
    held_out = []
    for draw in range(args.eval_draws):
        dataset.set_epoch(draw)
        held_out.append(default_collate([dataset[i] for i in range(len(dataset))]))
    print(f"{len(data.subjects)} training subjects, {len(held.subjects)} held out", flush=True)
    for task in args.tasks.split(","):
        history = train_on_fresh_views(settings, data, held_out, (task,), args)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            with open(args.out / "fresh.jsonl", "a") as f:
                for h in history:
                    f.write(json.dumps({"run": task, **h}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, required=True, help="the workflow's outdir")
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("--steps", type=int, default=150, help="at most this many steps per run")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=",".join(TASKS), help="tasks to train alone")
    p.add_argument("--no-joint", action="store_true", help="skip the run of all seven")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--fresh", action="store_true", help="fresh views, held-out signals")
    p.add_argument("--eval-every", type=int, default=50, help="--fresh: steps between scores")
    p.add_argument("--eval-draws", type=int, default=8, help="--fresh: views per subject")
    p.add_argument(
        "--atlas-groups", type=int, default=None,
        help="merge the atlas classes into this many groups by size (merge_atlas_classes)",
    )  # fmt: skip
    args = p.parse_args()

    config = load_config(args.config, sections=CONFIG_SECTIONS)
    settings = TrainSettings.from_config(config)
    inputs = TrainInputs.from_arguments(
        args.results / "manifest.parquet",
        config["cache"]["label_table"],
        args.results / "features",
        {},
    )
    if args.fresh:
        fresh(args, settings, inputs)
        return
    data = inputs.load(TASKS)  # every table: each run switches on its own tasks
    batch = fixed_batch(settings, data, args.batch, args.seed)
    groups = merge_atlas_classes(batch, args.atlas_groups) if args.atlas_groups else None
    runs = [((t,), "equal") for t in args.tasks.split(",")]
    if not args.no_joint:
        runs.append((TASKS, settings.balancing))
    rows = []
    for tasks, balancing in runs:
        name = "all" if len(tasks) > 1 else tasks[0]
        start = time.perf_counter()
        history = train_on_batch(
            settings, data, batch, tasks, balancing, args.steps, args.lr, args.seed, groups
        )
        seconds = time.perf_counter() - start
        for task in tasks:
            first = next((h["step"] for h in history if reached(task, h[task])), None)
            last = history[-1][task]
            rows.append({"run": name, "task": task, "first_step": first, "last": last})
            shown = "not reached" if first is None else f"step {first}"
            print(
                f"{name:12s} {task:12s} level {LEVELS[task]:<5} {shown:12s} "
                f"last {last if last is None else round(last, 3)} "
                f"({len(history)} steps, {seconds:.0f} s)",
                flush=True,
            )
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            with open(args.out / "heads.jsonl", "a") as f:
                for h in history:
                    f.write(json.dumps({"run": name, **h}) + "\n")
    failed = [r for r in rows if r["first_step"] is None]
    print(f"heads_reached={len(rows) - len(failed)}/{len(rows)}")


if __name__ == "__main__":
    main()
