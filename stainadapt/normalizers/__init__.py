"""Stain normalisers (Macenko, Reinhard, Vahadane): torch, batched, on any device.

Create them through the registry (``stainadapt.create("normalizers", "macenko")``) or
import the classes. See ``docs/normalizers.md`` for the conventions.
"""

from __future__ import annotations

from .base import StainNormalizer, TissueWarning
from .macenko import Macenko
from .reinhard import Reinhard
from .vahadane import Vahadane

__all__ = ["Macenko", "Reinhard", "StainNormalizer", "TissueWarning", "Vahadane"]
