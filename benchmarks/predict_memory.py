"""Peak memory and wall time of ``stainadapt predict`` on a big synthetic image, in a child.

Run: ``python benchmarks/predict_memory.py [--size 8192] [--model RUN] [--device cpu]``
(a flat tiled TIFF, tissue everywhere unless ``--glass``), or with ``--slide`` an
Aperio-style SVS (JPEG tiles, levels 4 and 16; tissue on three discs covering a third
of the area, glass elsewhere) and an all-glass SVS of the same size.

Both are written tile by tile, so building them costs no memory. ``stainadapt predict``
runs in a child process that reports its own peak RSS (``getrusage(RUSAGE_SELF)``, what
``/usr/bin/time -v`` reports), cross-checked by sampling it with psutil, and the time
spent after its imports (``predict_s``: model load, reading, prediction, writing).

``--slide`` also times the model alone in another child: ``predict_windows`` on batches
of random windows (same tile, batch size, device, amp and threads as predict), giving
``model_s_per_window`` (the mean of a timing before and one after the predictions).
``ratio`` is ``predict_s / (tissue windows x model_s_per_window)`` (target <= 1.15:
reading, resampling, stitching and writing hide behind the model);
``ratio_to_model_in_predict`` (CPU) divides by the time predict itself spent in the
model's forward instead, immune to a shared machine's drift; and
``glass_fraction`` the all-glass slide's ``predict_s`` over the tissue slide's (target
< 0.05). Targets: peak RSS < 1.5 GB. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    pool = _texture_pool(t, rng)
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


#: Discs of tissue on the ``--slide`` slide, ``(x, y, radius)`` as fractions of its width,
#: height and shorter side: on a square slide together 3 * pi * 0.188**2 = 0.333 of the area.
DISCS = ((0.25, 0.25, 0.188), (0.70, 0.35, 0.188), (0.40, 0.75, 0.188))
GLASS = 242


def _texture_pool(t: int = 256, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Eight ``t``-square textured tiles (pale background, darker blobs, noise)."""
    rng = np.random.default_rng(0) if rng is None else rng
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
    return pool


def disc_pixels(height: int, width: int, glass_only: bool = False):
    """A :data:`stainadapt.testing.slides.Pixels` function: textured discs on glass."""
    pool = _texture_pool()
    t = pool[0].shape[0]
    side = min(height, width)
    discs = [(cx * width, cy * height, r * side) for cx, cy, r in DISCS]

    def pixels(x: int, y: int, w: int, h: int, f: int) -> np.ndarray:
        out = np.full((h, w, 3), GLASS, np.uint8)
        if glass_only:
            return out
        # level-0 centres of the box's pixels
        x0, x1, y0, y1 = x * f, (x + w) * f, y * f, (y + h) * f
        near = [(cx, cy, r) for cx, cy, r in discs
                if max(x0 - cx, 0, cx - x1) ** 2 + max(y0 - cy, 0, cy - y1) ** 2 <= r * r]
        if not near:
            return out
        tex = pool[((x // t) * 7 + (y // t) * 3) % len(pool)]
        tex = np.tile(tex, (-(-h // t), -(-w // t), 1))[:h, :w]
        xs = (x + np.arange(w) + 0.5) * f
        ys = (y + np.arange(h) + 0.5) * f
        inside = np.zeros((h, w), bool)
        for cx, cy, r in near:
            inside |= ((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2) <= r * r
        out[inside] = tex[inside]
        return out

    return pixels


def write_disc_slide(path: Path, height: int, width: int, glass_only: bool = False) -> None:
    """An Aperio-style ``height x width`` SVS of :func:`disc_pixels` (JPEG, levels 4, 16)."""
    from stainadapt.testing.slides import write_svs

    write_svs(path, disc_pixels(height, width, glass_only), mpp=0.5, power=20,
              factors=(4, 16), compression="jpeg", shape=(height, width))


#: The child: imports first (not timed), then the CLI; reports its own peak RSS and, on
#: the CPU (where a call's time is its compute), the time spent in the model's forward.
_CHILD = """
import atexit, json, resource, sys, time
t0 = time.perf_counter()
import torch, timm, stainadapt.inference.paths
from stainadapt.cli.app import main
from stainadapt.inference.predictor import SlidingWindowPredictor as P
t1 = time.perf_counter()
inside = [0.0, 0]
forward = P.predict_windows
def timed(self, windows):
    start = time.perf_counter()
    out = forward(self, windows)
    inside[0] += time.perf_counter() - start
    inside[1] += windows.shape[0]
    return out
if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cpu":
    P.predict_windows = timed
def _report():
    print("BENCH " + json.dumps({"import_s": t1 - t0, "predict_s": time.perf_counter() - t1,
          "model_in_predict_s": inside[0], "model_windows": inside[1],
          "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=sys.stderr)
atexit.register(_report)
sys.argv = ["stainadapt"] + sys.argv[1:]
main()
"""

#: Time per window of the model alone, as predict runs it.
_MODEL_TIME = """
import json, sys, time, torch
from stainadapt.inference.predictor import SlidingWindowPredictor
from stainadapt.runs import load_model
run, device, amp = sys.argv[1], sys.argv[4], sys.argv[5]
tile, batch = int(sys.argv[2]), int(sys.argv[3])
net, _ = load_model(run, device=device)
p = SlidingWindowPredictor(net, tile, batch_size=batch, device=device, amp=amp)
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (batch, 3, tile, tile), dtype=torch.uint8, generator=g).to(p.device)
sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
for _ in range(3):
    p.predict_windows(x)
sync()
n, start = 0, time.perf_counter()
while n < 8 or time.perf_counter() - start < 5.0:
    p.predict_windows(x).cpu()
    n += 1
sync()
print(json.dumps({"model_s_per_window": (time.perf_counter() - start) / (n * batch),
                  "model_batches": n, "torch_threads": torch.get_num_threads()}))
"""


def run_predict(args: list[str]) -> dict:
    """``stainadapt predict ARGS`` in a child: peak RSS, times, windows run and skipped."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, "predict", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampled = 0

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

    start = time.perf_counter()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    log, _ = proc.communicate()
    wall = time.perf_counter() - start
    th.join()
    bench = {}
    for line in log.splitlines():
        if line.startswith("BENCH "):
            bench = json.loads(line[6:])
    text = " ".join(log.split())
    m = re.search(r"skipped (\d+) of (\d+) windows", text)
    skipped, total = (int(m.group(1)), int(m.group(2))) if m else (0, None)
    if proc.returncode:
        print(log[-2000:], file=sys.stderr)
    return {
        "exit_code": proc.returncode,
        "peak_rss_mb": round(bench.get("maxrss_kb", 0) / 1024, 1),
        "peak_rss_sampled_mb": round(sampled / 2**20, 1),
        "wall_s": round(wall, 2),
        "import_s": round(bench.get("import_s", 0.0), 2),
        "predict_s": round(bench.get("predict_s", 0.0), 2),
        "windows": total,
        "windows_run": None if total is None else total - skipped,
        "model_in_predict_s": round(bench.get("model_in_predict_s", 0.0), 2),
    }


def mask_facts(mask_path: Path) -> dict:
    import tifffile

    if not mask_path.exists():
        return {"mask_shape": None, "mask_tiled": False}
    with tifffile.TiffFile(mask_path) as tif:
        return {"mask_shape": list(tif.pages[0].shape), "mask_tiled": tif.pages[0].is_tiled}


def make_run(run: Path, backbone: str, tile: int) -> None:
    """A random-init ``backbone`` run folder, built in a child (this process stays small)."""
    code = (
        "import torch; from stainadapt.models.unet import SegmentationNet;"
        "from stainadapt.runs import save_model; torch.manual_seed(0);"
        f"save_model({str(run)!r}, SegmentationNet({backbone!r}, pretrained=None),"
        f" {{'image_size': {tile}}})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def bench_slide(args: argparse.Namespace, work: Path, run: Path) -> dict:
    """The ``--slide`` mode (module docstring)."""
    width = args.width or args.size
    result: dict = {"size": args.size, "width": width, "device": args.device, "tile": args.tile,
                    "batch_size": args.batch_size,
                    "model": args.model or f"untrained {args.backbone}",
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    name = f"{args.size}x{width}"
    paths = {"tissue": work / f"discs{name}.svs", "glass": work / f"glass{name}.svs"}
    t0 = time.perf_counter()
    for kind, path in paths.items():
        if not path.exists():
            write_disc_slide(path, args.size, width, glass_only=kind == "glass")
    result["slide_build_s"] = round(time.perf_counter() - t0, 1)
    def model_time() -> float:
        timing = subprocess.run(
            [sys.executable, "-c", _MODEL_TIME, str(run), str(args.tile), str(args.batch_size),
             args.device, args.amp], check=True, capture_output=True, text=True)
        return json.loads(timing.stdout.strip().splitlines()[-1])["model_s_per_window"]

    before = model_time()
    for kind, path in paths.items():
        out = work / f"out-{kind}"
        r = run_predict([str(path), "--model", str(run), "--out", str(out), "--device",
                         args.device, "--batch-size", str(args.batch_size), "--tile",
                         str(args.tile), "--amp", args.amp, "--overwrite"])
        r.update(mask_facts(out / path.with_suffix(".tif").name))
        result[kind] = r
    # before and after: on a shared machine the speed drifts during a long run
    after = model_time()
    per_window = (before + after) / 2
    result["model_s_per_window"] = round(per_window, 5)
    result["model_s_per_window_before_after"] = [round(before, 5), round(after, 5)]
    tissue = result["tissue"]
    model_s = (tissue["windows_run"] or 0) * per_window
    result["model_s"] = round(model_s, 2)
    result["ratio"] = round(tissue["predict_s"] / model_s, 3) if model_s else None
    result["ratio_with_imports"] = (round(tissue["wall_s"] / model_s, 3) if model_s else None)
    # the model's own share of the same run (CPU only): no drift between the two
    inside = tissue["model_in_predict_s"]
    result["ratio_to_model_in_predict"] = round(tissue["predict_s"] / inside, 3) if inside else None
    result["glass_fraction"] = round(result["glass"]["predict_s"] / tissue["predict_s"], 4)
    result["under_1_5_gb"] = max(result[k]["peak_rss_mb"] for k in paths) < 1536
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--slide", action="store_true",
                    help="an Aperio-style SVS, a third tissue, and an all-glass twin")
    ap.add_argument("--width", type=int, help="--slide width (default --size): a wide strip "
                    "holds full-width bands with few windows")
    ap.add_argument("--model", help="run folder (default: an untrained --backbone network)")
    ap.add_argument("--backbone", default="resnet34")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--glass", type=float, default=0.0, help="fraction of blank glass tiles")
    ap.add_argument("--workdir", help="keep files here (default: a temporary folder)")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="stainadapt-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.model) if args.model else work / f"run-{args.backbone}-{args.tile}"
    if not args.model and not (run / "model.safetensors").exists():
        make_run(run, args.backbone, args.tile)
    if args.slide:
        print(json.dumps(bench_slide(args, work, run)))
        return
    slide = work / f"slide{args.size}.tif"
    t0 = time.perf_counter()
    if not slide.exists():
        write_slide(slide, args.size, args.glass)
    build_s = time.perf_counter() - t0
    out = work / "out"
    r = run_predict([str(slide), "--model", str(run), "--out", str(out), "--device",
                     args.device, "--batch-size", str(args.batch_size), "--tile",
                     str(args.tile), "--amp", args.amp, "--overwrite"])
    result = {
        "size": args.size,
        "device": args.device,
        "model": args.model or f"untrained {args.backbone}",
        **r,
        "slide_rgb_mb": round(args.size**2 * 3 / 2**20, 1),
        **mask_facts(out / slide.with_suffix(".tif").name),
        "predict_wall_s": r["wall_s"],
        "slide_build_s": round(build_s, 1),
        "cpu_threads": os.cpu_count(),
        "under_1_5_gb": r["peak_rss_mb"] < 1536,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
