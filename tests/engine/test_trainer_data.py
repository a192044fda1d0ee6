"""Tiny synthetic domains for the trainer tests (helpers, plus a check of the helper).

Source and target differ only by a colour shift: the same kind of round "glomerulus" on a
textured background, drawn in PASM-like (source) or Masson-like (target) colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PALETTES = {
    "source": ((232, 205, 215), (150, 70, 140)),
    "target": ((205, 225, 235), (70, 120, 160)),
}


def make_domain(root: Path, kind: str, n: int = 6, size: int = 96, seed: int = 0,
                masks: bool = True) -> Path:
    """Write ``root/images/*.png`` (+ ``root/masks/*.png``) and return ``root``."""
    rng = np.random.default_rng(seed + (0 if kind == "source" else 1000))
    back, fore = (np.array(c, np.float32) for c in PALETTES[kind])
    (root / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.15, 0.3) * size
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img = np.where(mask[..., None], fore, back)
        img = img + rng.normal(0, 12, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        if masks:
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"im{i}.png")
    return root


def test_make_domain(tmp_path):
    root = make_domain(tmp_path / "s", "source", n=2, size=64)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["im0.png", "im1.png"]
    assert np.asarray(Image.open(root / "masks" / "im0.png")).max() == 255
