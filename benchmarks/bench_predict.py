"""Sliding-window predict vs raw model forward on the same windows, and the seam check.

Run: ``python benchmarks/bench_predict.py [--model RUN] [--device cpu] [--size 1024]``.

Targets:

* tiling overhead: predict throughput at least 0.8x the raw forward throughput on the
  same windows (tissue everywhere, so nothing is skipped). ``ratio`` below is
  ``raw forward time / predict time`` for identical windows, batches, AMP and device;
  ``predict_px_s`` is also given per *image* pixel (the overlap makes each image pixel
  pass through the model ~1.8x at overlap tile/4);
* seams: a ``size x size`` image predicted with tile 256 / overlap 64 agrees with the
  one-tile prediction at Dice >= 0.99. Use a trained ``--model``; an untrained network's
  logits hover around 0 and its Dice says little (the output flags it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stainadapt.data.io import read_image
from stainadapt.inference import SlidingWindowPredictor, window_starts
from stainadapt.metrics import segmentation_metrics


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _image(args) -> np.ndarray:
    if args.image:
        img = read_image(args.image)
        return img[: args.size, : args.size]
    from stainadapt.data.synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, stains=(args.stain,), n=1, size=args.size, seed=args.seed)
        path = next((Path(tmp) / args.stain / "images").iterdir())
        return read_image(path)


def _model(args):
    if args.model:
        from stainadapt.runs import load_model

        return load_model(args.model)[0], True
    from stainadapt.models.unet import SegmentationNet

    torch.manual_seed(0)
    return SegmentationNet(args.backbone).eval(), False


def raw_forward_seconds(pred: SlidingWindowPredictor, image: np.ndarray, repeats: int) -> float:
    """Best time to run the model alone on the windows ``pred`` cuts from ``image``."""
    t, dev = pred.tile, pred.device
    h, w = image.shape[:2]
    ys = window_starts(max(h, t), t, pred.overlap)
    xs = window_starts(max(w, t), t, pred.overlap)
    padded = np.pad(image, ((0, max(0, t - h)), (0, max(0, t - w)), (0, 0)), mode="symmetric")
    windows = torch.stack(
        [torch.from_numpy(padded[y : y + t, x : x + t].copy()) for y in ys for x in xs]
    ).permute(0, 3, 1, 2)
    x = windows.to(dev).float().div_(255.0)
    if pred.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            _sync(dev)
            start = time.perf_counter()
            for b in range(0, x.shape[0], pred.batch_size):
                torch.sigmoid(pred._forward(x[b : b + pred.batch_size]))
            _sync(dev)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="run folder (default: an untrained --backbone network)")
    ap.add_argument("--backbone", default="resnet34")
    ap.add_argument("--image", help="image to use (default: a synthetic tile)")
    ap.add_argument("--stain", default="masson")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-seam", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    net, trained = _model(args)
    image = _image(args)
    pred = SlidingWindowPredictor(
        net, args.tile, args.overlap, batch_size=args.batch_size, device=args.device,
        amp=args.amp, min_tissue=0,
    )  # fmt: skip
    dev = pred.device
    pred.predict(image[: args.tile, : args.tile])  # warm-up
    raw_forward_seconds(pred, image, 1)  # warm-up of the batch shapes
    # Interleaved pairs: on a shared machine the load drifts; each pair sees the same load.
    times, raws = [], []
    for _ in range(args.repeats):
        _sync(dev)
        start = time.perf_counter()
        prob = pred.predict(image)
        _sync(dev)
        times.append(time.perf_counter() - start)
        raws.append(raw_forward_seconds(pred, image, 1))
    best, raw = min(times), min(raws)
    ratios = sorted(r / t for r, t in zip(raws, times, strict=True))
    h, w = image.shape[:2]
    n = pred.count_windows(h, w)
    out = {
        "device": str(dev),
        "amp": str(pred.autocast_dtype),
        "threads": torch.get_num_threads(),
        "model": args.model or f"untrained {args.backbone}",
        "image": [h, w],
        "tile": args.tile,
        "overlap": args.overlap,
        "windows": n,
        "predict_s": round(best, 4),
        "raw_forward_s": round(raw, 4),
        "ratio_best": round(raw / best, 3),
        "ratio_median_pair": round(ratios[len(ratios) // 2], 3),
        "predict_px_s": round(h * w / best),
        "predict_window_px_s": round(n * args.tile**2 / best),
        "raw_forward_window_px_s": round(n * args.tile**2 / raw),
    }
    if not args.skip_seam:
        one = SlidingWindowPredictor(
            net, max(h, w) // 32 * 32 if max(h, w) % 32 == 0 else (max(h, w) // 32 + 1) * 32,
            0, batch_size=1, device=args.device, amp=args.amp, min_tissue=0,
        )  # fmt: skip
        whole = one.predict(image)
        m = segmentation_metrics(prob > 0.5, whole > 0.5)
        out["seam_dice"] = round(m["dice"], 5)
        out["seam_foreground"] = round(float((whole > 0.5).mean()), 4)
        out["seam_mean_abs_prob_diff"] = round(float(np.abs(prob - whole).mean()), 5)
        out["trained_model"] = trained
    print(json.dumps(out))


if __name__ == "__main__":
    main()
