"""Make docs/images/synth_contact_sheet.png: synthetic PASM and Masson tiles, mask outlines.

Run from the repository root::

    python docs/make_contact_sheet.py [--n 5] [--size 256] [--seed 0]

Each row is one stain; tiles come from the same generator as ``stainadapt synth`` (tile
``i`` of the row is tile ``i`` of ``stainadapt synth --seed SEED --size SIZE``). The
glomerulus mask (including Bowman's capsule) is outlined in green.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from stainadapt.data import synth

OUT = Path(__file__).parent / "images" / "synth_contact_sheet.png"


def outline(img: np.ndarray, mask: np.ndarray, width: int = 2) -> np.ndarray:
    edge = mask & ~ndi.binary_erosion(mask, iterations=width, border_value=0)
    out = img.copy()
    out[edge] = (40, 230, 60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    pad, label_w = 4, 64
    rows = []
    for stain in ("pasm", "masson"):
        tiles = []
        for i in range(args.n):
            img, mask = synth.make_tile(stain, args.size, synth.tile_rng(args.seed, stain, i))
            tiles.append(outline(img, mask))
        rows.append((stain, tiles))
    s = args.size
    w = label_w + args.n * (s + pad) + pad
    h = len(rows) * (s + pad) + pad
    sheet = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (stain, tiles) in enumerate(rows):
        y = pad + r * (s + pad)
        draw.text((6, y + s // 2 - 6), stain.upper(), fill=(0, 0, 0))
        for c, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(tile), (label_w + pad + c * (s + pad), y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)  # smallest PNG: it lives in the repository
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
