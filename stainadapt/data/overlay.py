"""Masks drawn over their image: the outlines ``predict --overlay`` and a run's samples show.

One drawing rule for every picture of a mask: optionally tint the predicted pixels, then
draw the prediction's inner outline (the mask pixels with a background 4-neighbour;
pixels outside the image count as the pixel itself, so a mask touching the border is not
outlined along it), then the ground truth's outline on top.
"""

from __future__ import annotations

import numpy as np

__all__ = ["draw_overlay", "outline"]

Colour = tuple[int, int, int]


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """``(H, W) bool``: the inner outline of ``mask``, ``width`` 1 or 2 pixels.

    ``width=2`` adds the outline shifted one pixel down and right.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1, mode="edge")
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    edge = m[1:-1, 1:-1] & ~inner
    if width >= 2:
        edge = edge | np.pad(edge, ((1, 0), (1, 0)))[:-1, :-1]
    return edge


def draw_overlay(
    image: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray | None = None,
    *,
    colour: Colour = (0, 255, 0),
    width: int = 1,
    tint: float = 0.0,
    tint_colour: Colour = (0, 255, 0),
    truth_colour: Colour = (255, 0, 0),
) -> np.ndarray:
    """``(H, W, 3) uint8`` copy of ``image`` with ``pred`` (and ``truth``) drawn on it.

    ``image``: ``(H, W, 3) uint8``; ``pred``/``truth``: ``(H, W)``, non-zero = glomerulus.
    Predicted pixels are blended ``tint`` of the way towards ``tint_colour`` (0: not
    tinted), the prediction's outline (``width`` px) is drawn in ``colour`` and the
    truth's (1 px) in ``truth_colour``.
    """
    p = np.asarray(pred, dtype=bool)
    if tint:
        out = image.astype(np.float32).copy()
        out[p] = (1.0 - tint) * out[p] + tint * np.array(tint_colour, np.float32)
    else:
        out = image.copy()
    out[outline(p, width)] = colour
    if truth is not None:
        out[outline(np.asarray(truth, dtype=bool))] = truth_colour
    return out.clip(0, 255).astype(np.uint8) if out.dtype != np.uint8 else out
