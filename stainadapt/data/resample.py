"""Images, masks and probabilities between a tile's resolution and a model's.

A model trained with ``downsample = d`` (``TrainConfig.downsample``) sees its tiles
``d`` times coarser than they are stored: a glomerulus and its surroundings then fit in
one crop, which is what lets a small network learn from tens of tiles. Everything that
feeds it a whole image (prediction, evaluation, test-time adaptation, pseudo-labels)
resamples the image down the same way and the probabilities back up, so masks always
come out at the input's own size. Pillow's box filter averages every source pixel into
the coarse one (no aliasing); masks are averaged the same way and kept where at least
half the area is glomerulus; probabilities come back bilinearly.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = ["check_downsample", "model_downsample", "scaled_shape", "downsample_image",
           "downsample_mask", "upsample_probs"]


def check_downsample(value: float) -> float:
    """``value`` as a float >= 1 (a :class:`ValueError` names what is wrong otherwise)."""
    d = float(value)
    if not math.isfinite(d) or d < 1.0:
        raise ValueError(f"downsample must be a number >= 1, got {value!r}")
    return d


def model_downsample(model: object) -> float:
    """How many times coarser than its input ``model`` wants an image (1: as is).

    ``load_model`` and the trainer set ``model.downsample`` (``TrainConfig.downsample``);
    any other module is taken at its input's resolution.
    """
    return float(getattr(model, "downsample", 1.0) or 1.0)


def scaled_shape(shape: tuple[int, int], downsample: float) -> tuple[int, int]:
    """``(H, W)`` divided by ``downsample``, rounded, at least 1 pixel each."""
    return (max(1, round(shape[0] / downsample)), max(1, round(shape[1] / downsample)))


def downsample_image(image: np.ndarray, downsample: float) -> np.ndarray:
    """An ``(H, W, 3) uint8`` image ``downsample`` times coarser (box filter); as is at 1."""
    if downsample == 1.0:
        return image
    h, w = scaled_shape(image.shape[:2], downsample)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BOX))


def downsample_mask(mask: np.ndarray, downsample: float) -> np.ndarray:
    """A binary ``(H, W)`` mask ``downsample`` times coarser: area share >= 1/2 (bool)."""
    if downsample == 1.0:
        return mask
    h, w = scaled_shape(mask.shape[:2], downsample)
    area = Image.fromarray((np.asarray(mask) > 0).astype(np.float32))  # mode "F"
    return np.asarray(area.resize((w, h), Image.BOX)) >= 0.5


def upsample_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(h, w) float32`` probabilities resized bilinearly to ``shape`` ``(H, W)``."""
    if probs.shape[:2] == tuple(shape):
        return probs
    out = Image.fromarray(np.ascontiguousarray(probs, dtype=np.float32))  # mode "F"
    return np.asarray(out.resize((int(shape[1]), int(shape[0])), Image.BILINEAR),
                      dtype=np.float32).clip(0.0, 1.0)
