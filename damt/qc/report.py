"""The QC page of the Snakemake report: distributions, failures, and a slice montage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # without a display matplotlib falls back to Agg
import numpy as np
import pandas as pd

from damt.io import save_figure, write_atomic
from damt.manifest import KEY
from damt.paths import ATLAS_FILE, IMAGE_FILE

STATUS_COLOURS = {"pass": "tab:green", "warn": "tab:orange", "fail": "tab:red"}


def measure_frame(
    manifest: pd.DataFrame, tables: Mapping[str, pd.DataFrame], measures: Sequence[str]
) -> pd.DataFrame:
    """Key measures per subject: manifest columns or columns of any feature table (with the
    subject's ``segmenter`` where the manifest has one)."""
    out = manifest[[KEY, "status", *(["segmenter"] if "segmenter" in manifest else [])]].copy()
    for name in measures:
        if name in manifest.columns:
            out[name] = manifest[name].to_numpy()
            continue
        for frame in tables.values():
            if name in frame.columns:
                out = out.merge(frame[[KEY, name]], on=KEY, how="left")
                break
    return out


def plot_distributions(measures: pd.DataFrame, path: str | Path, outlier_z: float) -> None:
    """One strip plot per measure, coloured by QC status; robust-z outliers are labelled.

    A cohort of several segmenters (FreeSurfer and FastSurfer) gets one strip per segmenter.
    """
    cols = [
        c
        for c in measures.columns
        if c not in (KEY, "status", "segmenter") and measures[c].notna().sum() > 0
    ]
    segmenters = (
        measures["segmenter"].replace("", "unknown").to_numpy()
        if "segmenter" in measures
        else np.full(len(measures), "")
    )
    groups = sorted(set(segmenters))
    position = np.array([groups.index(g) for g in segmenters], dtype=float)
    n = max(len(cols), 1)
    ncols = min(4, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, col in zip(axes.ravel(), cols, strict=False):
        vals = measures[col].to_numpy(dtype=float)
        ok = np.isfinite(vals)
        med = np.nanmedian(vals)
        mad = np.nanmedian(np.abs(vals - med)) * 1.4826
        z = (vals - med) / mad if mad > 0 else np.zeros_like(vals)
        jitter = position + rng.uniform(-0.2, 0.2, size=len(vals))
        for status, colour in STATUS_COLOURS.items():
            sel = ok & (measures["status"].to_numpy() == status)
            ax.scatter(jitter[sel], vals[sel], s=18, c=colour, label=status, alpha=0.8)
        for i in np.flatnonzero(ok & (np.abs(z) > outlier_z)):
            ax.annotate(measures[KEY].iloc[i], (jitter[i], vals[i]), fontsize=7, color="red")
        ax.set_title(col, fontsize=9)
        if len(groups) > 1:
            ax.set_xticks(range(len(groups)), groups, fontsize=7)
        else:
            ax.set_xticks([])
    for ax in axes.ravel()[len(cols) :]:
        ax.axis("off")
    if cols:
        axes.ravel()[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Key measures by QC status (labelled: robust |z| > {outlier_z:g})")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_failures(manifest: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """TSV of every subject that does not pass, with its reasons (the report's table)."""
    rows = manifest[manifest["status"] != "pass"]
    table = pd.DataFrame(
        {
            KEY: rows[KEY],
            "status": rows["status"],
            "reasons": [", ".join(r) for r in rows["reasons"]],
            "detail": rows["detail"],
        }
    ).sort_values(["status", KEY], ascending=[True, True])
    write_atomic(path, lambda tmp: table.to_csv(tmp, sep="\t", index=False))
    return table


def plot_montage(
    manifest: pd.DataFrame, manifest_dir: str | Path, path: str | Path, n_subjects: int
) -> None:
    """Mid-slices (three planes) of a few cached subjects with the atlas overlaid.

    ``cache_dir`` entries are relative to ``manifest_dir`` (the workflow's outdir).
    """
    cached = manifest[manifest["has_cache"]].sort_values(["status", KEY])
    picks = cached.head(n_subjects)
    n = max(len(picks), 1)
    fig, axes = plt.subplots(3, n, figsize=(2.6 * n, 7.8), squeeze=False)
    for col, rec in enumerate(picks.itertuples()):
        cache = Path(manifest_dir) / rec.cache_dir
        image = np.load(cache / IMAGE_FILE, mmap_mode="r")
        atlas = np.load(cache / ATLAS_FILE, mmap_mode="r")
        centre = [s // 2 for s in image.shape]
        planes = [
            (np.asarray(image[centre[0]]), np.asarray(atlas[centre[0]])),
            (np.asarray(image[:, centre[1]]), np.asarray(atlas[:, centre[1]])),
            (np.asarray(image[:, :, centre[2]]), np.asarray(atlas[:, :, centre[2]])),
        ]
        for row, (img, lab) in enumerate(planes):
            ax = axes[row, col]
            ax.imshow(np.rot90(img.astype(np.float32)), cmap="gray", vmin=0, vmax=1)
            overlay = np.ma.masked_equal(np.rot90(lab.astype(np.int32)), 0)
            ax.imshow(overlay % 20, cmap="tab20", alpha=0.35, interpolation="nearest")
            ax.axis("off")
        axes[0, col].set_title(
            f"{rec.subject_id} ({rec.status})", fontsize=8, color=STATUS_COLOURS[rec.status]
        )
    for ax in axes[:, len(picks) :].ravel():
        ax.axis("off")
    fig.suptitle("Training cache: mid-slices with the atlas classes overlaid")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
