"""``make_domain``: a tiny labelled (or unlabelled) domain folder written to disk.

For tests of anything that reads domain folders -- the trainer, the CLI, a plugin run
end to end -- without the cost of the synthetic tissue generator
(:mod:`stainadapt.data.synth`)::

    from stainadapt.testing import make_domain
    source = make_domain(tmp_path / "s", "source", n=4, size=64)
    target = make_domain(tmp_path / "t", "target", n=4, size=64, masks=False)

Source and target differ only by a colour shift: the same kind of round "glomerulus"
on a noisy background, drawn in PASM-like (``"source"``) or Masson-like (``"target"``)
colours, so a domain discriminator has something to tell apart and G something to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["PALETTES", "make_domain"]

#: ``kind -> (background RGB, glomerulus RGB)``.
PALETTES = {
    "source": ((232, 205, 215), (150, 70, 140)),
    "target": ((205, 225, 235), (70, 120, 160)),
}


def make_domain(root: Path, kind: str, n: int = 6, size: int = 96, seed: int = 0,
                masks: bool = True) -> Path:
    """Write ``n`` images ``root/images/im{i}.png`` (+ ``root/masks/im{i}.png``); return ``root``.

    Images are ``(size, size, 3)`` uint8, masks ``(size, size)`` with 0 and 255: one disc
    of radius 0.15-0.3 ``size`` per image. ``kind`` picks the palette (``"source"`` or
    ``"target"``); the same ``seed`` and ``kind`` give the same files.
    """
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
