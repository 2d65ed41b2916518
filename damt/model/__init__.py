"""The DAMT model: MONAI's 3D Swin Transformer encoder, task heads and decoders.

The names below are imported on first use (PEP 562): the workflow checks run settings through
:mod:`damt.model.spec` when it is parsed, and that must not import torch and MONAI.
"""

from importlib import import_module

_HOMES = {
    "SwinEncoder": "damt.model.encoder",
    "brain_pool": "damt.model.encoder",
    "build_encoder": "damt.model.encoder",
    "encoder_stride": "damt.model.encoder",
    "load_encoder": "damt.model.encoder",
    "pooled_features": "damt.model.encoder",
    "read_encoder_spec": "damt.model.encoder",
    "DAMTNetwork": "damt.model.network",
    "TASKS": "damt.model.spec",
    "EncoderSpec": "damt.model.spec",
    "NetworkSpec": "damt.model.spec",
    "ViewSpec": "damt.model.spec",
    "encoder_spec_from_config": "damt.model.spec",
    "view_spec_from_config": "damt.model.spec",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'damt.model' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
