"""Architecture of the encoder and of the pretraining network, read from the `pretrain` config.

Every size in the model comes from here: the preset (embed dim, depths, heads, window, patch),
the crop sizes, and the widths of the data (feature tables, label table).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

# Swin stages MONAI's SwinTransformer builds (layers1..layers4); fixed by its implementation.
N_STAGES = 4


@dataclass(frozen=True)
class EncoderSpec:
    """Hyper-parameters of MONAI's 3D Swin Transformer (``SwinUNETR(...).swinViT``)."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window: int
    patch: int = 2
    in_channels: int = 1
    checkpointing: bool = False
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if len(self.depths) != N_STAGES or len(self.num_heads) != N_STAGES:
            raise ValueError(
                f"depths and num_heads need {N_STAGES} entries (MONAI's SwinTransformer has "
                f"{N_STAGES} stages), got {list(self.depths)} and {list(self.num_heads)}"
            )
        if self.embed_dim % 12:
            raise ValueError(
                f"embed_dim {self.embed_dim} must be a multiple of 12 (SwinUNETR's feature_size "
                "rule, so the weights load into it)"
            )
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(
                    f"stage {i + 1} has {self.embed_dim * 2**i} channels, not divisible by "
                    f"{heads} heads"
                )

    @property
    def stride(self) -> int:
        """Voxels per token of the last hidden state along each axis."""
        return self.patch * 2**N_STAGES

    def channels(self) -> list[int]:
        """Channels of the five hidden states (patch embedding, then after each stage)."""
        return [self.embed_dim * 2**i for i in range(N_STAGES + 1)]

    @property
    def out_channels(self) -> int:
        """Channels of the last hidden state (the pooled feature width)."""
        return self.channels()[-1]

    def swin_kwargs(self) -> dict:
        """Keyword arguments of ``monai.networks.nets.swin_unetr.SwinTransformer``."""
        return {
            "in_chans": self.in_channels,
            "embed_dim": self.embed_dim,
            "window_size": (self.window,) * 3,
            "patch_size": (self.patch,) * 3,
            "depths": tuple(self.depths),
            "num_heads": tuple(self.num_heads),
            "drop_path_rate": self.drop_path_rate,
            "use_checkpoint": self.checkpointing,
            "spatial_dims": 3,
        }

    def swin_unetr_kwargs(self) -> dict:
        """Keyword arguments of ``SwinUNETR`` whose ``swinViT`` matches this encoder's weights."""
        return {
            "in_channels": self.in_channels,
            "feature_size": self.embed_dim,
            "depths": list(self.depths),
            "num_heads": list(self.num_heads),
            "window_size": self.window,
            "patch_size": self.patch,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EncoderSpec:
        d = json.loads(text)
        return cls(**{**d, "depths": tuple(d["depths"]), "num_heads": tuple(d["num_heads"])})


@dataclass(frozen=True)
class ViewSpec:
    """Crop sizes and masking of the views of one subject (see ``damt.training.views``)."""

    global_crop: int
    local_crop: int
    local_crop_source: int
    mim_patch: int
    mim_ratio: float = 0.75
    location_grid: int = 3
    location_axes: int = 2  # 2: grid² classes over the first two axes; 3: grid³ over all

    @property
    def n_locations(self) -> int:
        """Classes of the location task."""
        return self.location_grid**self.location_axes

    def check(self, encoder: EncoderSpec, atlas_task: bool) -> None:
        """Refuse crop sizes the encoder, its decoders or the MIM masks cannot use."""
        for name in ("global_crop", "local_crop"):
            size = getattr(self, name)
            if size % encoder.stride:
                raise ValueError(
                    f"{name} {size} must be a multiple of {encoder.stride} (patch {encoder.patch} "
                    f"× 2^{N_STAGES} stages): the decoders mirror every downsampling"
                )
            if size % self.mim_patch:
                raise ValueError(f"{name} {size} must be a multiple of mim_patch {self.mim_patch}")
            if atlas_task and size < 2 * encoder.stride:
                raise ValueError(
                    f"{name} {size} must be at least {2 * encoder.stride} with the atlas task: its "
                    "decoder instance-normalises the last hidden state, which needs more than one "
                    "voxel"
                )
        if self.mim_patch % encoder.patch:
            raise ValueError(
                f"mim_patch {self.mim_patch} must be a multiple of the patch size {encoder.patch}"
            )
        if self.local_crop_source > self.global_crop:
            raise ValueError("local_crop_source must not exceed global_crop")


TASKS = ("rotation", "location", "contrastive", "atlas", "morphometry", "radiomics", "mim")
# The contrastive heads (pretrain.contrastive.projector).
PROJECTORS = ("linear", "mlp")


@dataclass(frozen=True)
class NetworkSpec:
    """Everything that fixes the parameter shapes of the pretraining network."""

    encoder: EncoderSpec
    tasks: tuple[str, ...]
    n_rotations: int
    n_locations: int
    contrastive_dim: int
    morphometry_dim: int
    radiomics_dim: int
    n_atlas_classes: int
    contrastive_projector: str

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; known: {list(TASKS)}")
        if not self.tasks:
            raise ValueError("every task is switched off: nothing to train")
        for task, width in (
            ("morphometry", self.morphometry_dim),
            ("radiomics", self.radiomics_dim),
        ):
            if task in self.tasks and width < 1:
                raise ValueError(f"the {task} task is on but its table has no feature columns")
        if self.contrastive_projector not in PROJECTORS:
            raise ValueError(
                f"unknown contrastive projector {self.contrastive_projector!r}; known: "
                f"{list(PROJECTORS)}"
            )
        if "atlas" in self.tasks and self.n_atlas_classes < 2:
            raise ValueError("the atlas task needs a label table with at least 2 classes")

    def to_dict(self) -> dict:
        """Plain containers only (stored in checkpoints, which load with weights_only)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> NetworkSpec:
        """From :meth:`to_dict`'s form; a spec stored before the projector could be chosen had
        the linear one."""
        encoder = EncoderSpec.from_json(json.dumps(d["encoder"]))
        d = {"contrastive_projector": "linear", **d}
        return cls(**{**d, "encoder": encoder, "tasks": tuple(d["tasks"])})

    def differences(self, other: NetworkSpec) -> list[tuple[str, object, object]]:
        """``(field, value here, value there)`` of each field that differs (encoder dotted),
        except gradient checkpointing: it changes how a step is computed (memory for time),
        not the network, so a run may resume with it switched either way."""

        def flat(spec: NetworkSpec) -> dict:
            d = asdict(spec)
            return {**{f"encoder.{k}": v for k, v in d.pop("encoder").items()}, **d}

        mine, theirs = flat(self), flat(other)
        return [
            (k, mine[k], theirs[k])
            for k in mine
            if k != "encoder.checkpointing" and mine[k] != theirs[k]
        ]


def encoder_spec_from_config(pretrain: dict) -> EncoderSpec:
    """The encoder of the configured preset (``pretrain`` = validated config section)."""
    p = pretrain["presets"][pretrain["preset"]]
    return EncoderSpec(
        embed_dim=p["embed_dim"],
        depths=tuple(p["depths"]),
        num_heads=tuple(p["num_heads"]),
        window=p["window"],
        patch=p["patch"],
        checkpointing=p["checkpointing"],
        drop_path_rate=pretrain["drop_path_rate"],
    )


def view_spec_from_config(pretrain: dict) -> ViewSpec:
    """The crops and masks of the configured preset."""
    p = pretrain["presets"][pretrain["preset"]]
    return ViewSpec(
        global_crop=p["global_crop"],
        local_crop=p["local_crop"],
        local_crop_source=p["local_crop_source"],
        mim_patch=p["mim_patch"],
        mim_ratio=pretrain["mim_mask_ratio"],
        location_grid=pretrain["location_grid"],
        location_axes=pretrain["location_axes"],
    )
