"""The encoder's weights in the layout of MONAI's self-supervised Swin weights.

MONAI's SwinUNETR fine-tuning scripts (research-contributions: BTCV, BraTS) load pretrained
encoders through ``SwinUNETR.load_from(torch.load("model_swinvit.pt"))``: a ``state_dict`` whose
keys are those of the pretraining network's Swin module under ``module.`` (Tang et al.,
"Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image Analysis", CVPR 2022),
with the MLP layers named ``fc1``/``fc2`` where MONAI's ``SwinTransformer`` says ``linear1``/
``linear2``. :func:`monai_ssl_state` writes ours that way, so those scripts take our weights
unchanged, provided the network they build has our encoder's architecture
(:func:`script_arguments`).
"""

from __future__ import annotations

import torch

# Where MONAI's MLP names differ from those of the published weights.
_RENAMED = {".mlp.linear1.": ".mlp.fc1.", ".mlp.linear2.": ".mlp.fc2."}

# What the research-contributions scripts build: SwinUNETR's defaults, but for feature_size and
# in_channels, which are their command-line options (--feature_size, --in_channels).
SCRIPT_ARCHITECTURE = {
    "depths": [2, 2, 2, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
    "patch_size": 2,
}


def monai_ssl_state(swin_state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"state_dict": ...}`` of ``SwinUNETR(...).swinViT``'s ``swin_state`` under the published
    names: what ``SwinUNETR.load_from`` reads."""
    state = {}
    for key, value in swin_state.items():
        for ours, theirs in _RENAMED.items():
            key = key.replace(ours, theirs)
        state[f"module.{key}"] = value
    return {"state_dict": state}


def script_arguments(swin_unetr_kwargs: dict) -> list[str]:
    """The options of MONAI's fine-tuning scripts that build a network for these weights.

    Raises ValueError naming what the scripts cannot build (they fix depths, heads, window and
    patch at SwinUNETR's defaults): build ``SwinUNETR(**swin_unetr_kwargs)`` yourself then, and
    ``load_from`` takes the same file.
    """
    differs = [
        f"{key} {swin_unetr_kwargs[key]} (the scripts build {value})"
        for key, value in SCRIPT_ARCHITECTURE.items()
        if as_json(swin_unetr_kwargs[key]) != value
    ]
    if differs:
        raise ValueError(
            "MONAI's SwinUNETR fine-tuning scripts cannot build this encoder: "
            + ", ".join(differs)
            + "; build SwinUNETR(**swin_unetr_kwargs) from the model card and call its "
            "load_from on the same file"
        )
    return [
        f"--feature_size={swin_unetr_kwargs['feature_size']}",
        f"--in_channels={swin_unetr_kwargs['in_channels']}",
    ]


def as_json(value: object) -> object:
    """``value`` as it reads back from the model card's JSON (a tuple as a list)."""
    return list(value) if isinstance(value, tuple) else value
