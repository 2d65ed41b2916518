"""DAMT: from a FreeSurfer SUBJECTS_DIR to a pretrained 3D Swin Transformer brain-MRI encoder."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("damt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
