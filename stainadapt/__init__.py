"""stainadapt: cross-stain glomerulus segmentation with multi-level adversarial learning.

The public entry point for plugins is :func:`create`::

    import stainadapt
    norm = stainadapt.create("normalizers", "macenko")
    disc = stainadapt.create("discriminators", "single:layer=f9", feature_table)
"""

from __future__ import annotations

from importlib import metadata

from .errors import InputError, PluginError, RunFailure, StainadaptError
from .registry import create, list_plugins, parse_spec

try:
    __version__ = metadata.version("stainadapt")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "create",
    "list_plugins",
    "parse_spec",
    "StainadaptError",
    "InputError",
    "PluginError",
    "RunFailure",
]
