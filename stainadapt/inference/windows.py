"""Where the windows go, how they are weighted, and which hold tissue.

Window starts are spread evenly, so the actual overlap is at least the requested one and
the last window ends on the image border. Each window's probabilities are blended with a
Gaussian weight (sigma = tile / 8, as nnU-Net does; zeros of the weight are replaced by
its smallest positive value so nothing divides by zero).

Background glass: a window whose fraction of tissue pixels (base-10 optical density
summed over R, G and B above :data:`TISSUE_OD`) is below the predictor's ``min_tissue``
is not run through the model. This is a cheap test of whole windows on the raw 8-bit
pixels. It is not the stain normalisers' per-pixel test (``tissue_mask`` in
``stainadapt.normalizers.od``: natural-log OD of every channel at least ``beta``), which
picks the pixels a stain fit uses; the two answer different questions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "TISSUE_OD",
    "gaussian_weight",
    "window_starts",
    "window_tissue_fraction",
    "window_tissue_map",
]

#: Base-10 optical-density sum (R + G + B) above which a window pixel counts as tissue.
TISSUE_OD = 0.15

# Base-10 OD of one 8-bit channel value: -log10((v + 1) / 256); a lookup table keeps it cheap.
_OD_LUT = (-np.log10((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)


def window_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window start positions along one axis: evenly spread, first 0, last ``length - tile``.

    With ``length <= tile`` there is one window at 0 (the image is padded to ``tile``).
    The step between starts is at most ``tile - overlap``.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def gaussian_weight(tile: int, sigma_scale: float = 1.0 / 8.0) -> torch.Tensor:
    """``(tile, tile)`` float32 Gaussian, peak 1, sigma ``tile * sigma_scale``, no zeros."""
    centre = (tile - 1) / 2.0
    sigma = tile * sigma_scale
    x = torch.arange(tile, dtype=torch.float64)
    g = torch.exp(-((x - centre) ** 2) / (2.0 * sigma * sigma))
    w = torch.outer(g, g)
    w = w / w.max()
    w = w.to(torch.float32)
    positive = w[w > 0]
    w[w == 0] = positive.min()
    return w


def window_tissue_fraction(tile: np.ndarray, stride: int = 4) -> float:
    """Fraction of a window's pixels (subsampled by ``stride``) that are tissue.

    ``tile``: ``(H, W, 3) uint8``. A pixel is tissue when its base-10 OD summed over the
    three channels exceeds :data:`TISSUE_OD` (0.15): bright glass has OD near 0, stained
    tissue well above. Decides which windows the predictor skips (module docstring).
    """
    sub = tile[::stride, ::stride]
    od = _OD_LUT[sub[..., 0]] + _OD_LUT[sub[..., 1]] + _OD_LUT[sub[..., 2]]
    return float((od > TISSUE_OD).mean()) if od.size else 0.0


def window_tissue_map(band: np.ndarray, stride: int) -> np.ndarray:
    """``(ceil(H/stride), ceil(W/stride)) bool``: the tissue pixels of an ``(H, W, 3)`` band.

    The test of :func:`window_tissue_fraction`, kept per pixel so that every window of a
    band reads its fraction from one map.
    """
    sub = band[::stride, ::stride]
    return (_OD_LUT[sub[..., 0]] + _OD_LUT[sub[..., 1]] + _OD_LUT[sub[..., 2]]) > TISSUE_OD
