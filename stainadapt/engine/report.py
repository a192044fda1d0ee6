"""Pictures of a run: ``curves.png`` (losses and Dice per epoch) and ``samples/`` overlays.

Drawn with Pillow only (no matplotlib dependency). Every file is written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_write_bytes
from ..data.overlay import draw_overlay

__all__ = ["draw_curves", "write_curves", "write_overlay"]

COLOURS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: dict[str, list[tuple[int, float]]],
    phases: Sequence[str],
) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    values = [v for pts in series.values() for _, v in pts if math.isfinite(v)]
    n = max(len(phases), 1)
    # phase boundaries as light vertical lines
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            x = x0 + (x1 - x0) * i / n
            draw.line([(x, y0), (x, y1)], fill=(200, 200, 200))
    if not values:
        return
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    draw.text((x1 + 4, y0), f"{hi:.3g}", fill=(0, 0, 0))
    draw.text((x1 + 4, y1 - 10), f"{lo:.3g}", fill=(0, 0, 0))

    def xy(epoch: int, value: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (epoch + 0.5) / n
        y = y1 - (y1 - y0) * (value - lo) / (hi - lo)
        return x, y

    for k, (name, pts) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        pts = [(e, v) for e, v in pts if math.isfinite(v)]
        coords = [xy(e, v) for e, v in pts]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for cx, cy in coords:
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
        draw.text((x0 + 6, y0 + 4 + 12 * k), name, fill=colour)


def draw_curves(records: Sequence[dict[str, Any]]) -> Image.Image:
    """Every loss, and every validation metric, against the epoch; in adversarial runs a
    third panel with each discriminator head's held-out accuracy (``disc_heldout``)."""
    phases = [r.get("phase", "") for r in records]
    losses: dict[str, list[tuple[int, float]]] = {}
    metrics: dict[str, list[tuple[int, float]]] = {}
    heldout: dict[str, list[tuple[int, float]]] = {}
    for i, r in enumerate(records):
        for k, v in (r.get("losses") or {}).items():
            losses.setdefault(k, []).append((i, float(v)))
        for split, vals in (r.get("val") or {}).items():
            for k, v in (vals or {}).items():
                if k in ("dice", "accuracy"):
                    metrics.setdefault(f"{split} {k}", []).append((i, float(v)))
        for k, v in (r.get("disc_heldout") or {}).items():
            heldout.setdefault(k, []).append((i, float(v)))
    height = 820 if heldout else 560
    img = Image.new("RGB", (720, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    _panel(draw, (40, 30, 660, 260), "losses per epoch", losses, phases)
    _panel(draw, (40, 300, 660, 530), "validation (Dice, accuracy)", metrics, phases)
    if heldout:
        _panel(draw, (40, 570, 660, 790), "discriminators: held-out accuracy", heldout,
               phases)
    draw.text((40, height - 20), "epochs; grey lines: phase changes (seg | disc | adv | self)",
              fill=(0, 0, 0))
    return img


def write_curves(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    buf = io.BytesIO()
    draw_curves(records).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def write_overlay(
    path: str | Path, image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None
) -> Path:
    """A run's sample picture: prediction tinted green and outlined, truth outlined red."""
    picture = draw_overlay(image, pred, truth, colour=(0, 200, 0), tint=0.35)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
