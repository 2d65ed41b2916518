"""The DAMT model: MONAI's 3D Swin Transformer encoder, task heads and decoders."""

from damt.model.encoder import (
    SwinEncoder,
    build_encoder,
    load_encoder,
    pooled_features,
    read_encoder_spec,
)
from damt.model.network import DAMTNetwork
from damt.model.spec import (
    TASKS,
    EncoderSpec,
    NetworkSpec,
    ViewSpec,
    encoder_spec_from_config,
    view_spec_from_config,
)

__all__ = [
    "TASKS",
    "DAMTNetwork",
    "EncoderSpec",
    "NetworkSpec",
    "SwinEncoder",
    "ViewSpec",
    "build_encoder",
    "encoder_spec_from_config",
    "load_encoder",
    "pooled_features",
    "read_encoder_spec",
    "view_spec_from_config",
]
