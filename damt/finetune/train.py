"""One unit's training: AdamW on a cosine schedule, the best epoch on the inner validation
subjects kept (early stopping after ``patience`` epochs without a better one), then its
predictions on the held-out subjects. Phenotypes train on whole volumes, segmentation on random
crops around the structures and is inferred on whole volumes by sliding windows."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from damt.finetune.settings import FinetuneSettings
from damt.model.encoder import pad_to_stride
from damt.probe.settings import CLASSIFICATION


@dataclass(frozen=True)
class Split:
    """A unit's subjects: those it trains on, those that pick its best epoch, those it is scored
    on (held out from pretraining and from every fine-tuning)."""

    train: list[str]
    validation: list[str]
    test: list[str]


def cosine(base: float, steps: int) -> np.ndarray:
    """Learning-rate factors per optimiser step: a half cosine from 1 to 0 (1 for one step)."""
    return 0.5 * (1 + np.cos(np.pi * np.arange(steps) / max(steps, 1))) * base


def _autocast(device: torch.device):
    # bf16 on CUDA, as pretraining; full precision on the CPU.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class _Trainer:
    """The loop both kinds share: schedule, steps, early stopping on a validation score."""

    def __init__(
        self, model: nn.Module, groups: list[dict], settings: FinetuneSettings, steps: int
    ):
        self.model, self.settings = model, settings
        self.opt = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
        self.base = [g["lr"] for g in self.opt.param_groups]
        self.schedule = cosine(1.0, steps)
        self.step = 0
        self.device = next(model.parameters()).device

    def update(self, loss: torch.Tensor) -> None:
        factor = self.schedule[min(self.step, len(self.schedule) - 1)]
        for group, base in zip(self.opt.param_groups, self.base, strict=True):
            group["lr"] = base * factor
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1

    def fit(self, epoch: Callable[[int], None], score: Callable[[], float] | None) -> dict:
        """Run ``epoch(i)`` up to ``epochs`` times; with ``score`` (higher is better) keep the
        best epoch's weights and stop after ``patience`` epochs without a better score."""
        best, best_epoch, state = -math.inf, None, None
        for i in range(self.settings.epochs):
            epoch(i)
            if score is None:
                continue
            value = score()
            if value > best:
                best, best_epoch, state = value, i, copy.deepcopy(self.model.state_dict())
            elif i - best_epoch >= self.settings.patience:
                break
        if state is not None:
            self.model.load_state_dict(state)
        return {
            "epochs_run": i + 1,
            "best_epoch": best_epoch,
            "validation_score": best if state else None,
        }


def fit_phenotype(
    model: nn.Module,
    groups: list[dict],
    settings: FinetuneSettings,
    volume: Callable[[str], np.ndarray],
    values: Mapping[str, float],
    kind: str,
    classes: Sequence,
    split: Split,
    seed: int,
) -> dict:
    """Fine-tune ``model`` (a :class:`damt.finetune.models.PooledHead`) on the training
    subjects' ``values``; its held-out predictions (``pred``, and ``proba`` per class for
    classification), in ``split.test`` order."""
    device = next(model.parameters()).device
    classification = kind == CLASSIFICATION
    # Regression targets are z-scored on the training subjects (the head starts near the mean).
    mean, std = 0.0, 1.0
    if not classification:
        train_y = np.array([values[s] for s in split.train], np.float64)
        mean, std = train_y.mean(), train_y.std() or 1.0
    index = {c: i for i, c in enumerate(classes)}

    def batch(ids: Sequence[str]) -> torch.Tensor:
        x = torch.from_numpy(np.stack([volume(s) for s in ids])).to(device)  # (B, 1, D, H, W)
        return pad_to_stride(x, model.stride)

    def target(ids: Sequence[str]) -> torch.Tensor:
        if classification:
            return torch.tensor([index[values[s]] for s in ids], device=device)
        return torch.tensor([(values[s] - mean) / std for s in ids], device=device).float()

    def loss_of(ids: Sequence[str]) -> torch.Tensor:
        with _autocast(device):
            out = model(batch(ids)).float()
        y = target(ids)
        return F.cross_entropy(out, y) if classification else F.mse_loss(out[:, 0], y)

    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(len(split.train) / settings.batch_size)
    trainer = _Trainer(model, groups, settings, settings.epochs * per_epoch)

    def epoch(_: int) -> None:
        model.train()
        order = rng.permutation(split.train)
        for start in range(0, len(order), settings.batch_size):
            trainer.update(loss_of(list(order[start : start + settings.batch_size])))

    @torch.no_grad()
    def score() -> float:
        model.eval()
        return -float(np.mean([loss_of([s]).item() for s in split.validation]))

    record = trainer.fit(epoch, score if split.validation else None)
    model.eval()
    with torch.no_grad(), _autocast(device):
        out = torch.cat([model(batch([s])).float() for s in split.test]).cpu()
    if classification:
        proba = torch.softmax(out, dim=1).numpy()
        pred = [classes[i] for i in proba.argmax(1)]
        return {**record, "pred": pred, "proba": proba.tolist()}
    return {**record, "pred": (out[:, 0].numpy() * std + mean).tolist(), "proba": None}


def dice_per_structure(pred: np.ndarray, target: np.ndarray, n_structures: int) -> np.ndarray:
    """Dice of each structure 1..K between two label volumes; NaN where both lack it."""
    out = np.full(n_structures, np.nan)
    for k in range(1, n_structures + 1):
        p, t = pred == k, target == k
        total = int(p.sum()) + int(t.sum())
        if total:
            out[k - 1] = 2.0 * np.logical_and(p, t).sum() / total
    return out


def fit_segmentation(
    model: nn.Module,
    groups: list[dict],
    settings: FinetuneSettings,
    pair: Callable[[str], tuple[np.ndarray, np.ndarray]],
    n_structures: int,
    split: Split,
    seed: int,
) -> dict:
    """Fine-tune ``model`` (a MONAI ``SwinUNETR``) on random ``settings.crop``³ crops of the
    training subjects (half centred on a structure voxel, MONAI's ``RandCropByPosNegLabeld``);
    Dice per structure of its sliding-window prediction of each held-out whole volume
    (``dice``, in ``split.test`` order)."""
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.transforms import Compose, RandCropByPosNegLabeld, SpatialPadd

    device = next(model.parameters()).device
    crop = settings.crop
    crops = Compose(
        [
            SpatialPadd(("image", "label"), (crop,) * 3),
            RandCropByPosNegLabeld(
                ("image", "label"), "label", (crop,) * 3, pos=1, neg=1,
                num_samples=settings.crops_per_subject,
            ),
        ]
    ).set_random_state(seed)  # fmt: skip
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(len(split.train) * settings.crops_per_subject / settings.batch_size)
    trainer = _Trainer(model, groups, settings, settings.epochs * per_epoch)

    def epoch(_: int) -> None:
        model.train()
        samples = []
        for sid in rng.permutation(split.train):
            image, label = pair(sid)
            samples += crops({"image": image, "label": label})
        order = rng.permutation(len(samples))
        for start in range(0, len(order), settings.batch_size):
            chosen = [samples[i] for i in order[start : start + settings.batch_size]]
            # MONAI's crops are MetaTensors: plain tensors skip their per-op bookkeeping.
            x = torch.stack([torch.as_tensor(s["image"]).as_subclass(torch.Tensor) for s in chosen])
            y = torch.stack([torch.as_tensor(s["label"]).as_subclass(torch.Tensor) for s in chosen])
            x, y = x.to(device), y.to(device)
            with _autocast(device):
                out = model(x).float()  # (B, K + 1, c, c, c)
            trainer.update(loss_fn(out, y))

    @torch.no_grad()
    def predict(sid: str) -> tuple[np.ndarray, np.ndarray]:
        image, label = pair(sid)
        x = torch.from_numpy(image)[None].to(device)
        with _autocast(device):
            logits = sliding_window_inference(
                x, (crop,) * 3, settings.batch_size, model, overlap=settings.overlap,
                mode="gaussian",
            )  # fmt: skip
        return logits.argmax(1)[0].cpu().numpy(), label[0]

    def score() -> float:
        model.eval()
        dice = [dice_per_structure(*predict(s), n_structures) for s in split.validation]
        return float(np.nanmean(dice))

    record = trainer.fit(epoch, score if split.validation else None)
    model.eval()
    dice = [dice_per_structure(*predict(s), n_structures).tolist() for s in split.test]
    return {**record, "dice": dice}
