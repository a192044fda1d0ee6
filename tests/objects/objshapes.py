"""Synthetic masks for the object tests: discs, rings, and a rasteriser for GeoJSON."""

from __future__ import annotations

import numpy as np


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def rasterise(coordinates: list, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a GeoJSON Polygon's rings (even-odd, corner convention)."""
    from skimage.draw import polygon as draw_polygon

    out = np.zeros(shape, dtype=bool)
    for k, ring in enumerate(coordinates):
        ring = np.asarray(ring, dtype=np.float64)
        rr, cc = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape)
        layer = np.zeros(shape, dtype=bool)
        layer[rr, cc] = True
        out = out | layer if k == 0 else out & ~layer
    return out
