"""Discriminators: domain classifiers on G's feature maps or output, and the shape one.

Each built-in is a plugin (``single``, ``concat``, ``mirrored``, ``shape``, ``entropy``)
created with ``stainadapt.create("discriminators", spec, feature_table)``; see
``base.Discriminator``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Discriminator"]


def __getattr__(name: str) -> Any:
    if name == "Discriminator":
        return import_module("stainadapt.discriminators.base").Discriminator
    raise AttributeError(name)
