"""Per-task learning signals: does each pretext task learn at all, compared with chance?

Losses of different tasks are not comparable, and a falling loss can hide a task that stays at
chance. Every step adds sums to the epoch's meter (``step_*`` functions, no host syncs); the
epoch's record then gets, per task, a signal and its chance level under the same key after
``signal/`` and ``chance/`` (:func:`epoch_signals`):

- ``rotation_accuracy``: chance 1 / number of rotation classes (1/10);
- ``location_accuracy``: chance = the epoch's majority class rate (always guessing it);
- ``contrastive_top1``: the positive is the most similar candidate of the global batch (same-
  subject duplicates excluded); chance = mean over anchors of 1 / candidates;
- ``atlas_dice``: mean Dice over the classes present in the epoch's targets (voxel counts
  summed over the epoch, both views, every second voxel along each axis); chance = mean over
  those classes of their voxel share, which is what a labelling drawn at random with the target
  class frequencies scores (1/K for K present classes);
- ``morphometry_r2``, ``radiomics_r2``: 1 - SSE / SST over the finite targets of the epoch,
  SST about each feature's epoch mean (features with fewer than two values left out); chance 0
  (predicting that mean);
- ``mim_l1_ratio``: the MIM L1 divided by the L1 of predicting each view's mean intensity of
  its masked patches; chance 1 (lower is better).
"""

from __future__ import annotations

import torch

SIGNALS = {
    "rotation": "rotation_accuracy",
    "location": "location_accuracy",
    "contrastive": "contrastive_top1",
    "atlas": "atlas_dice",
    "morphometry": "morphometry_r2",
    "radiomics": "radiomics_r2",
    "mim": "mim_l1_ratio",
}


def step_classification(
    task: str, logits: torch.Tensor, target: torch.Tensor, n_classes: int
) -> dict[str, torch.Tensor]:
    """Correct predictions, their count and the label histogram of a classification head.

    ``logits`` (B, C), ``target`` (B,).
    """
    return {
        f"{task}/correct": (logits.argmax(1) == target).sum(),
        f"{task}/count": torch.tensor(float(target.numel()), device=target.device),
        f"{task}/classes": torch.bincount(target, minlength=n_classes),  # (C,)
    }


def step_contrastive(logits: torch.Tensor, positive: torch.Tensor) -> dict[str, torch.Tensor]:
    """Top-1 retrievals of the positive among the (masked) candidates, and their chance.

    ``logits`` (2 N_r, 2 N) with -inf at excluded candidates; ``positive`` (2 N_r,).
    """
    candidates = torch.isfinite(logits).sum(1).clamp_min(1)  # (2 N_r,)
    return {
        "contrastive/correct": (logits.argmax(1) == positive).sum(),
        "contrastive/anchors": torch.tensor(float(positive.numel()), device=logits.device),
        "contrastive/chance": (1.0 / candidates.double()).sum(),
    }


def step_atlas(
    logits: torch.Tensor, target: torch.Tensor, stride: int = 2
) -> dict[str, torch.Tensor]:
    """Per-class voxel counts of the prediction, the target and their overlap, on every
    ``stride``-th voxel along each spatial axis.

    ``logits`` (B, K, D, H, W), ``target`` (B, D, H, W) class indices. The subsampling: an
    argmax over K classes at every voxel costs about as much as the cross-entropy itself (540
    against 440 ms for 2 × 101 × 64³ on the 2-core VM); an eighth of the voxels on a regular
    grid costs a fifth of that. It is a sample: a class present only between the grid points
    leaves the mean (demo, last epoch: 0.007 on the grid against 0.002 on every voxel, both
    below the chance level of 0.009).
    """
    k = logits.shape[1]
    grid = (slice(None, None, stride),) * (logits.ndim - 2)
    pred = logits[(slice(None), slice(None), *grid)].argmax(1).reshape(-1)  # (B·d·h·w,)
    target = target[(slice(None), *grid)].reshape(-1).long()
    return {
        "atlas/intersection": torch.bincount(target[pred == target], minlength=k),  # (K,)
        "atlas/predicted": torch.bincount(pred, minlength=k),
        "atlas/target": torch.bincount(target, minlength=k),
    }


def step_regression(task: str, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-feature count, sum, sum of squares and squared error of the finite targets.

    ``pred`` and ``target`` (B, F); NaN targets are missing.
    """
    mask = torch.isfinite(target)
    y = torch.where(mask, target, 0.0).double()
    err = torch.where(mask, pred.double() - y, 0.0)
    return {
        f"{task}/n": mask.sum(0).double(),  # (F,)
        f"{task}/sum": y.sum(0),
        f"{task}/sumsq": (y * y).sum(0),
        f"{task}/sse": (err * err).sum(0),
    }


def mean_baseline_l1(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The MIM loss (``mim_l1``'s averaging) of predicting, in every view, the mean intensity of
    its masked patches.

    ``image`` (B, C, G, G, G), ``mask`` (B, g, g, g) on the MIM patch grid.
    """
    b, c, size = image.shape[0], image.shape[1], image.shape[-1]
    g = mask.shape[-1]
    p = size // g
    patches = image.float().reshape(b, c, g, p, g, p, g, p)
    m = mask.to(patches.dtype)  # (B, g, g, g)
    per_patch_mean = patches.mean(dim=(1, 3, 5, 7))  # (B, g, g, g)
    # Equal voxels per patch: the mean over masked voxels is the mean of masked patch means.
    view_mean = (per_patch_mean * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)  # (B,)
    err = (patches - view_mean[:, None, None, None, None, None, None, None]).abs()
    per_patch = err.mean(dim=(1, 3, 5, 7))
    return (per_patch * m).sum() / m.sum().clamp_min(1)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def epoch_signals(
    sums: dict[str, torch.Tensor], tasks: tuple[str, ...], n_rotations: int
) -> dict[str, float | None]:
    """``signal/<name>`` and ``chance/<name>`` of each task from the epoch's reduced sums.

    A task without any counted step in the epoch (all skipped) gives None.
    """
    out: dict[str, float | None] = {}

    def put(task: str, value: float | None, chance: float | None) -> None:
        out[f"signal/{SIGNALS[task]}"] = value
        out[f"chance/{SIGNALS[task]}"] = chance if value is not None else None

    for task in tasks:
        if task in ("rotation", "location") and f"{task}/count" in sums:
            count = float(sums[f"{task}/count"])
            chance = (
                1.0 / n_rotations
                if task == "rotation"
                else _ratio(float(sums[f"{task}/classes"].max()), count)
            )
            put(task, _ratio(float(sums[f"{task}/correct"]), count), chance)
        elif task == "contrastive" and "contrastive/anchors" in sums:
            anchors = float(sums["contrastive/anchors"])
            put(
                task,
                _ratio(float(sums["contrastive/correct"]), anchors),
                _ratio(float(sums["contrastive/chance"]), anchors),
            )
        elif task == "atlas" and "atlas/target" in sums:
            target, pred = sums["atlas/target"], sums["atlas/predicted"]
            present = target > 0
            if present.any():
                dice = 2 * sums["atlas/intersection"][present] / (pred + target)[present]
                share = target[present] / target.sum()
                put(task, float(dice.mean()), float(share.mean()))
        elif task in ("morphometry", "radiomics") and f"{task}/n" in sums:
            n, total = sums[f"{task}/n"], sums[f"{task}/sum"]
            ok = n >= 2
            sst = (sums[f"{task}/sumsq"] - total**2 / n.clamp_min(1))[ok].sum()
            sse = sums[f"{task}/sse"][ok].sum()
            put(task, 1.0 - float(sse) / float(sst) if float(sst) > 0 else None, 0.0)
        elif task == "mim" and "mim/baseline_l1" in sums:
            put(task, _ratio(float(sums["mim/l1"]), float(sums["mim/baseline_l1"])), 1.0)
        if f"signal/{SIGNALS[task]}" not in out:
            put(task, None, None)
    return out


def card_summary(record: dict | None) -> dict[str, dict]:
    """Per task, the last epoch's signal and chance level, for the model card."""
    if not record:
        return {}
    return {
        task: {
            "metric": name,
            "value": record[f"signal/{name}"],
            "chance": record.get(f"chance/{name}"),
        }
        for task, name in SIGNALS.items()
        if f"signal/{name}" in record
    }
