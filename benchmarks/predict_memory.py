"""Peak resident memory of ``stainadapt predict`` on a large tiled TIFF (default 8192 x 8192).

Run: ``python benchmarks/predict_memory.py [--size 8192] [--model RUN] [--device cpu]``.

Target: peak RSS under 1.5 GB on CPU, and an ``size x size`` mask written.
The slide is written tile by tile (tissue everywhere unless ``--glass``), so building it
costs no memory; ``stainadapt predict`` then runs in a child process and its peak RSS is
read from ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (what ``/usr/bin/time -v`` reports),
cross-checked by sampling the child with psutil. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def write_slide(path: Path, size: int, glass: float, seed: int = 0) -> None:
    """An RGB ``size x size`` tiled (256), zlib TIFF built from a pool of textured tiles."""
    import tifffile

    rng = np.random.default_rng(seed)
    t = 256
    yy, xx = np.mgrid[0:t, 0:t]
    pool = []
    for _ in range(8):
        tile = np.empty((t, t, 3), np.float32)
        tile[:] = rng.uniform(150, 200, 3)
        for _ in range(6):
            cy, cx, r = rng.uniform(0, t), rng.uniform(0, t), rng.uniform(15, 60)
            tile[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(40, 120, 3)
        tile += rng.normal(0, 8, tile.shape)
        pool.append(np.clip(tile, 0, 255).astype(np.uint8))
    blank = np.full((t, t, 3), 242, np.uint8)
    n = -(-size // t)

    def tiles():
        for i in range(n):
            for j in range(n):
                yield blank if rng.random() < glass else pool[(i * 7 + j * 3) % len(pool)]

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            data=tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(t, t),
            compression="zlib", photometric="rgb",
        )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--model", help="run folder (default: an untrained --backbone network)")
    ap.add_argument("--backbone", default="resnet34")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--glass", type=float, default=0.0, help="fraction of blank glass tiles")
    ap.add_argument("--workdir", help="keep files here (default: a temporary folder)")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="stainadapt-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"slide{args.size}.tif"
    t0 = time.perf_counter()
    if not slide.exists():
        write_slide(slide, args.size, args.glass)
    build_s = time.perf_counter() - t0
    run = Path(args.model) if args.model else work / "run"
    if not args.model and not (run / "model.safetensors").exists():
        # in a child too, so this process never holds torch or a model
        code = (
            "import torch; from stainadapt.models.unet import SegmentationNet;"
            "from stainadapt.runs import save_model; torch.manual_seed(0);"
            f"save_model({str(run)!r}, SegmentationNet({args.backbone!r}),"
            f" {{'image_size': {args.tile}}})"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    out = work / "out"
    cmd = [
        sys.executable, "-m", "stainadapt", "predict", str(slide), "--model", str(run),
        "--out", str(out), "--device", args.device, "--batch-size", str(args.batch_size),
        "--tile", str(args.tile), "--overwrite",
    ]  # fmt: skip
    base = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    sampled = 0

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sample() -> None:
        nonlocal sampled
        try:
            import psutil

            p = psutil.Process(proc.pid)
            while proc.poll() is None:
                sampled = max(sampled, p.memory_info().rss)
                time.sleep(0.2)
        except Exception:
            pass

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    log, _ = proc.communicate()
    wall = time.perf_counter() - start
    th.join()
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    import tifffile

    mask_path = out / slide.with_suffix(".tif").name
    shape = None
    if mask_path.exists():
        with tifffile.TiffFile(mask_path) as tif:
            shape = list(tif.pages[0].shape)
            tiled = tif.pages[0].is_tiled
    result = {
        "size": args.size,
        "device": args.device,
        "model": args.model or f"untrained {args.backbone}",
        "exit_code": proc.returncode,
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "peak_rss_sampled_mb": round(sampled / 2**20, 1),
        "earlier_children_max_rss_mb": round(base / 1024, 1),
        "slide_rgb_mb": round(args.size**2 * 3 / 2**20, 1),
        "mask_shape": shape,
        "mask_tiled": shape is not None and tiled,
        "predict_wall_s": round(wall, 1),
        "slide_build_s": round(build_s, 1),
        "cpu_threads": os.cpu_count(),
        "under_1_5_gb": peak_kb / 1024 < 1536,
    }
    print(log.strip().splitlines()[-3:] if log.strip() else "", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
