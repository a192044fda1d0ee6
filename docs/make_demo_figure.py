"""Make docs/images/demo_masson.png from a finished ``stainadapt demo`` folder.

    stainadapt demo --out stainadapt-demo            # about 5-10 min on a laptop CPU
    python docs/make_demo_figure.py stainadapt-demo  # -> docs/images/demo_masson.png

Rows are Masson images from the demo's held-out validation split (the split the trainer
made with the demo's seed; images with a glomerulus first); the columns are the image,
its ground truth, the source-only model's prediction, the UDA model's and (when the demo
has the run) UDA + self-training's, each mask drawn over the image, with that image's
Dice in the column title. The header gives the mean Masson Dice of the runs from
``results.json``. Pillow only (no matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parent / "images" / "demo_masson.png"
COLOURS = {"truth": (40, 200, 60), "source-only": (230, 60, 40), "uda": (40, 110, 240),
           "uda-self-training": (150, 40, 200)}
LABELS = {"source-only": "source-only", "uda": "UDA", "uda-self-training": "UDA + self-training"}


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a small bitmap font
        return ImageFont.load_default()


def _overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The image with ``mask`` tinted and outlined in ``colour`` (the library's overlay)."""
    from stainadapt.data.overlay import draw_overlay

    return draw_overlay(image, mask, colour=colour, width=2, tint=0.45, tint_colour=colour)


def _validation_items(demo: Path, results: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Masson validation images and masks, as the demo scored them."""
    from stainadapt.config import TrainConfig, load_toml
    from stainadapt.data.folders import scan_domain
    from stainadapt.data.splits import held_out
    from stainadapt.inference import load_domain_images

    config = TrainConfig(**load_toml(demo / "uda" / "config.toml"))
    target = Path(config.target or Path(results["data"]) / "masson")
    val = held_out(scan_domain(target, require_masks=True), config, "target")
    return load_domain_images(val, with_masks=True)


def _predict(run: Path, items: list, device: Any) -> list[np.ndarray]:
    from stainadapt.inference import predict_probs
    from stainadapt.runs import load_model, normalizer_from_meta

    model, meta = load_model(run, device=device)
    norm = normalizer_from_meta(meta.get("normalizer"), device=device)
    threshold = float(meta.get("threshold") or 0.5)
    return [(predict_probs(model, image, device, norm) > threshold).cpu().numpy()
            for _, image, _ in items]


def _mean_dice(results: dict[str, Any], run_name: str) -> str:
    for row in results["rows"]:
        if Path(row["run"]).name == run_name and "Macenko" not in row["method"] \
                and "test-time" not in row["method"]:
            return f"{row['dice']:.3f}"
    return "?"


def render(demo: Path, out: Path, n: int = 3, cell: int = 200) -> Path:
    import torch

    from stainadapt.metrics import segmentation_metrics

    demo = Path(demo)
    results = json.loads((demo / "results.json").read_text(encoding="utf-8"))
    items = _validation_items(demo, results)
    # images that hold a glomerulus first: an empty tile says little about a model
    items = sorted(items, key=lambda it: (not it[2].any(), it[0]))[:n]
    device = torch.device("cpu")
    runs = [name for name in LABELS
            if name != "uda-self-training" or (demo / name / "model.safetensors").is_file()]
    preds = {name: _predict(demo / name, items, device) for name in runs}

    pad, head, title = 6, 56, 22
    big, small = _font(16), _font(13)
    width = pad + (2 + len(runs)) * (cell + pad)
    height = head + len(items) * (title + cell + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    quick = " (quick budget: not a meaningful comparison)" if results.get("quick") else ""
    n_val = results["rows"][0]["n"] if results["rows"] else len(items)
    draw.text((pad, 8), "Synthetic PASM -> Masson, held-out Masson images" + quick,
              fill=(0, 0, 0), font=big)
    means = ", ".join(f"{LABELS[run]} {_mean_dice(results, run)}" for run in runs)
    draw.text((pad, 30), f"mean Masson Dice over {n_val} validation images: {means}",
              fill=(60, 60, 60), font=small)
    for r, (name, image, truth) in enumerate(items):
        y = head + r * (title + cell + pad)
        cells = [("Masson image " + name, image),
                 ("ground truth", _overlay(image, truth, COLOURS["truth"]))]
        for run in runs:
            pred = preds[run][r]
            dice = segmentation_metrics(pred, truth)["dice"]
            cells.append((f"{LABELS[run]}: Dice {dice:.2f}",
                          _overlay(image, pred, COLOURS[run])))
        for c, (caption, array) in enumerate(cells):
            x = pad + c * (cell + pad)
            draw.text((x, y + 3), caption, fill=(0, 0, 0), font=small)
            tile = Image.fromarray(array).resize((cell, cell), Image.Resampling.LANCZOS)
            sheet.paste(tile, (x, y + title))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)  # smallest PNG: it lives in the repository
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path, nargs="?", default=Path("stainadapt-demo"),
                    help="the folder given to `stainadapt demo --out` (default: stainadapt-demo)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"PNG to write (default: {OUT})")
    ap.add_argument("-n", type=int, default=3, help="validation images (rows), default 3")
    ap.add_argument("--cell", type=int, default=200, help="side of each picture in pixels")
    args = ap.parse_args(argv)
    if not (args.demo / "results.json").is_file():
        print(f"{args.demo}: no results.json; run `stainadapt demo --out {args.demo}` first",
              file=sys.stderr)
        return 2
    print(f"wrote {render(args.demo, args.out, n=args.n, cell=args.cell)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
