"""The segmentation network G (timm encoder + U-Net decoder) and its backbones.

Importing this package is cheap; the submodules import torch and timm.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["SegmentationNet", "FEATURE_NAMES", "model_summary"]

_WHERE = {
    "SegmentationNet": "stainadapt.models.unet",
    "FEATURE_NAMES": "stainadapt.models.unet",
    "model_summary": "stainadapt.models.summary",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(name)
