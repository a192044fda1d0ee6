"""Where the tissue is on a slide, from a low-resolution picture of it.

Stained tissue is coloured, or at least darker than the glass; glass is bright and grey.
:func:`tissue_mask` thresholds the HSV saturation of a thumbnail with Otsu's method (at
least :data:`MIN_SATURATION`, so a slide of bare glass does not split its noise in two;
at most :data:`MAX_SATURATION`, so a section that fills most of the picture does not
split its pale stain from its dark one and lose the pale one to the glass), adds
pixels no brighter than Otsu's threshold of the grey level (nor than
:data:`MAX_DARK_GREY`: unstained dark matter such as a grey-scale scan's objects), then
removes specks and fills small holes. :class:`TissueMap` holds that mask with its
downsample and answers "what fraction of this level-0 box is tissue" in constant time
(a summed-area table), which is what ``predict --min-tissue`` compares windows against
and what ``stainadapt tiles`` places random tiles on. :func:`slide_tissue` makes that
map from a slide's thumbnail (longer side :data:`THUMBNAIL_SIDE`): one rule wherever a
slide's tissue is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_DARK_GREY", "MAX_SATURATION", "MIN_SATURATION", "THUMBNAIL_SIDE", "TissueMap",
           "slide_tissue", "tissue_mask"]

#: Lowest saturation (0..255) the Otsu threshold may take.
MIN_SATURATION = 20
#: Highest saturation (0..255) the Otsu threshold may take: glass is never this coloured.
MAX_SATURATION = 50
#: Highest grey level (0..255) under which an unsaturated pixel may count as tissue.
MAX_DARK_GREY = 200
#: Longer side of the thumbnail a slide's tissue mask is found on.
THUMBNAIL_SIDE = 2048


def tissue_mask(
    thumbnail: np.ndarray, min_object: int = 64, max_hole: int = 1024
) -> np.ndarray:
    """``(h, w) bool``: tissue pixels of an ``(h, w, 3) uint8`` RGB thumbnail.

    Pixels with saturation above Otsu's threshold clipped to ``[MIN_SATURATION,
    MAX_SATURATION]``, or a grey level at most
    ``min(Otsu, MAX_DARK_GREY)`` (both after a 3x3 median, which drops isolated noisy
    pixels), are tissue; connected pieces under ``min_object`` pixels are removed and
    holes under ``max_hole`` pixels filled (thumbnail pixels).
    """
    from scipy import ndimage

    rgb = np.asarray(thumbnail)
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], dtype=bool)
    # 16-bit integer arithmetic: a 2048 px thumbnail needs a few MiB, not floats' tens.
    hi = rgb.max(axis=2).astype(np.uint16)
    sat = (hi - rgb.min(axis=2)) * np.uint16(255) // np.maximum(hi, 1)
    sat = ndimage.median_filter(sat.astype(np.uint8), size=3)
    grey = rgb[..., 0].astype(np.uint16) + rgb[..., 1] + rgb[..., 2]
    grey = ndimage.median_filter((grey // 3).astype(np.uint8), size=3)
    s_cut = _otsu(sat) if sat.min() != sat.max() else 255.0
    g_cut = _otsu(grey) if grey.min() != grey.max() else 0.0
    s_cut = min(max(s_cut, float(MIN_SATURATION)), float(MAX_SATURATION))
    mask = (sat > s_cut) | (grey <= min(g_cut, float(MAX_DARK_GREY)))
    if min_object > 1:
        mask = _drop_small(mask, min_object)
    if max_hole > 0:
        mask = ~_drop_small(~mask, max_hole + 1)
    return mask


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a ``uint8`` array: foreground is ``> t`` (as scikit-image's).

    The histogram is counted in row chunks, so no full-size integer copy is made.
    """
    counts = _bincount(values, 256)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(counts)[:-1].astype(np.float64)  # weight at or below each level
    w1 = float(counts.sum()) - w0
    s0 = np.cumsum(counts * levels)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (float((counts * levels).sum()) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(np.argmax(between))


def _bincount(values: np.ndarray, length: int) -> np.ndarray:
    """``np.bincount`` of a non-negative integer array, in chunks of 2**18 values.

    ``np.bincount`` first copies its input as 64-bit integers; chunks keep that copy small.
    """
    counts = np.zeros(length, dtype=np.int64)
    flat = values.reshape(-1)
    for start in range(0, flat.size, 2**18):
        counts += np.bincount(flat[start : start + 2**18], minlength=length)
    return counts


def _drop_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """``mask`` without its 8-connected pieces of fewer than ``min_pixels`` pixels."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    keep = _bincount(labels, n + 1) >= min_pixels
    keep[0] = False
    return keep[labels]


@dataclass
class TissueMap:
    """A tissue mask ``(h, w) bool`` whose pixel is ``downsample`` level-0 pixels wide."""

    mask: np.ndarray
    downsample: float

    def __post_init__(self) -> None:
        m = np.asarray(self.mask, dtype=bool)
        self.mask = m
        self._sums = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.int32)
        self._sums[1:, 1:] = m.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)

    @property
    def fraction(self) -> float:
        """Fraction of the slide that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def area_mm2(self, mpp: float | None) -> float | None:
        """Tissue area in mm² at ``mpp`` microns per level-0 pixel (``None`` without)."""
        if mpp is None:
            return None
        side_mm = self.downsample * mpp / 1000.0
        return float(self.mask.sum()) * side_mm * side_mm

    def box_fraction(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Fraction of the level-0 box ``[x0, x1) x [y0, y1)`` that is tissue.

        The box is taken in whole mask pixels (those it touches); one smaller than a mask
        pixel reads the pixel under its centre.
        """
        h, w = self.mask.shape
        d = self.downsample
        cx, cy = (x0 + x1) / (2 * d), (y0 + y1) / (2 * d)
        a0 = min(max(int(np.floor(x0 / d)), 0), w - 1)
        b0 = min(max(int(np.floor(y0 / d)), 0), h - 1)
        a1 = max(min(int(np.ceil(x1 / d)), w), a0 + 1)
        b1 = max(min(int(np.ceil(y1 / d)), h), b0 + 1)
        if x1 - x0 < d and y1 - y0 < d:
            a0, b0 = min(max(int(cx), 0), w - 1), min(max(int(cy), 0), h - 1)
            a1, b1 = a0 + 1, b0 + 1
        s = self._sums
        total = s[b1, a1] - s[b0, a1] - s[b1, a0] + s[b0, a0]
        return float(total) / float((b1 - b0) * (a1 - a0))


def slide_tissue(slide: Any, max_side: int = THUMBNAIL_SIDE) -> tuple[TissueMap, np.ndarray]:
    """``(tissue map, thumbnail (h, w, 3) uint8)`` of a slide.

    ``slide`` is a :class:`~stainadapt.data.slides.Slide` (anything with its
    ``thumbnail(max_side) -> (image, downsample)``); the map is :func:`tissue_mask` of
    the thumbnail, ``downsample`` level-0 pixels per map pixel.
    """
    thumb, downsample = slide.thumbnail(max_side)
    return TissueMap(tissue_mask(thumb), downsample), thumb
