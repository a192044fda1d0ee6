"""Headline performance figures in one process, as JSON: ``python benchmarks/report.py``.

Every figure that is a claim is reported next to the thing it is compared with, measured
in the same run (this machine is shared and noisy): our segmentation step beside
segmentation_models_pytorch's U-Net-ResNet34 step, the adversarial step beside what its
FLOPs predict from the segmentation step, both beside the device's fp32 matmul peak, our
Macenko beside torchstain's, predict throughput beside the raw forward throughput.

Options: ``--quick`` (fewer repeats, smaller slide; < 3 min on 2 CPU cores), ``--json``
(JSON only), ``--device cpu|cuda``, ``--amp off|bf16``, ``--channels-last``,
``--compile``, ``--batch N``, ``--size N``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = timeit(lambda: a @ b, device, repeats=3 if quick else 7)
    return 2 * n**3 / t / 1e9


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs (multiply-add = 2) of one call, forward and backward, as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _autocast(device: torch.device, amp: str):
    """Autocast as the library resolves ``amp`` (stainadapt.device.resolve_amp)."""
    from stainadapt.device import resolve_amp

    dtype = resolve_amp(amp, device)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def seg_step_factory(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: str):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(x.device, amp):
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        loss.backward()
        opt.step()

    return step


def trainer_step(case: str, root: Path, size: int, batch: int, device: str, amp: str):
    """The engine's own step (``Trainer.step``) for a case of ``bench_train.CASES``."""
    os.environ["STAINADAPT_BENCH_SIZE"] = str(size)
    os.environ["STAINADAPT_BENCH_BATCH"] = str(batch)
    os.environ["STAINADAPT_BENCH_DEVICE"] = device
    os.environ["STAINADAPT_BENCH_AMP"] = amp
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_train  # noqa: PLC0415

    domains = (bench_train.make_domain(root / "s", "source", n=2, size=size),
               bench_train.make_domain(root / "t", "target", n=2, size=size))
    return bench_train.build(case, domains, root / case)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="off", choices=["off", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--skip", default="", help="comma list: smp,adv,macenko,predict")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device(args.device)
    repeats = 3 if args.quick else 10
    torch.manual_seed(0)


    res: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "batch": args.batch,
        "size": args.size,
    }
    res["matmul_peak_gflops"] = matmul_peak_gflops(device, torch.float32, args.quick)
    if device.type == "cuda":
        res["matmul_peak_bf16_gflops"] = matmul_peak_gflops(device, torch.bfloat16, args.quick)

    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.rand(args.batch, 3, args.size, args.size, device=device).to(memory_format=mf)
    y = (torch.rand(args.batch, 1, args.size, args.size, device=device) > 0.5).float()

    def prepare(m: torch.nn.Module) -> torch.nn.Module:
        m = m.to(device).to(memory_format=mf).train()
        return torch.compile(m) if args.compile else m

    tmp = Path(tempfile.mkdtemp(prefix="stainadapt-report-"))
    seg = trainer_step("seg", tmp, args.size, args.batch, str(device), args.amp)
    res["seg_step_flops"] = count_flops(seg)
    res["seg_step_s"] = timeit(seg, device, repeats)
    res["seg_step_gflops"] = res["seg_step_flops"] / res["seg_step_s"] / 1e9
    res["seg_step_fraction_of_peak"] = res["seg_step_gflops"] / res["matmul_peak_gflops"]
    res["seg_images_per_s"] = args.batch / res["seg_step_s"]

    if "smp" not in skip:
        try:
            import segmentation_models_pytorch as smp

            m = prepare(smp.Unet("resnet34", encoder_weights=None, classes=1))
            smp_step = seg_step_factory(m, x, y, args.amp)
            # interleave ours and smp's: the machine's speed drifts
            ours, theirs = [], []
            for _ in range(repeats):
                ours.append(timeit(seg, device, 1, warmup=0))
                theirs.append(timeit(smp_step, device, 1, warmup=0 if ours[1:] else 1))
            res["smp_seg_step_s"] = statistics.median(theirs)
            res["seg_vs_smp_ratio"] = statistics.median(ours) / res["smp_seg_step_s"]
        except ImportError:
            res["smp_seg_step_s"] = None

    if "adv" not in skip:
        adv = trainer_step("uda-mirrored+shape", tmp, args.size, args.batch, str(device),
                           args.amp)
        res["adv_step_flops"] = count_flops(adv)
        t_seg, t_adv = [], []
        for _ in range(repeats):
            t_seg.append(timeit(seg, device, 1, warmup=0))
            t_adv.append(timeit(adv, device, 1, warmup=0 if t_adv else 1))
        res["adv_step_s"] = statistics.median(t_adv)
        res["adv_step_gflops"] = res["adv_step_flops"] / res["adv_step_s"] / 1e9
        res["adv_images_per_s"] = args.batch / res["adv_step_s"]
        time_ratio = res["adv_step_s"] / statistics.median(t_seg)
        flops_ratio = res["adv_step_flops"] / res["seg_step_flops"]
        res["adv_over_seg_time_ratio"] = time_ratio
        res["adv_over_seg_flops_ratio"] = flops_ratio
        res["adv_vs_flops_predicted_ratio"] = time_ratio / flops_ratio
        peak = res.get("matmul_peak_bf16_gflops") if args.amp == "bf16" else None
        res["adv_step_fraction_of_peak"] = res["adv_step_gflops"] / (
            peak or res["matmul_peak_gflops"])

    if "macenko" not in skip:
        res.update(bench_macenko(device, args.quick))

    if "predict" not in skip:
        res.update(bench_predict(device, args.quick, args.amp))
    return res


def bench_macenko(device: torch.device, quick: bool) -> dict:
    from stainadapt import create

    out: dict = {}
    size = 2048 if quick else 4096
    rng = np.random.default_rng(0)
    # A tissue-like image: two stains mixed with random concentrations, some background.
    from skimage import data as skdata

    ihc = skdata.immunohistochemistry()
    reps = size // ihc.shape[0] + 1
    big = np.tile(ihc, (reps, reps, 1))[:size, :size].copy()
    ref = ihc
    img_t = torch.from_numpy(big).permute(2, 0, 1).to(device)
    ref_t = torch.from_numpy(ref).permute(2, 0, 1).to(device)

    def ours():
        norm = create("normalizers", "macenko").to(device)
        norm.fit(ref_t)
        return norm(img_t)

    key = f"macenko_{size}_s"
    out[key] = timeit(ours, device, 2 if quick else 3)
    try:
        import torchstain

        def theirs():
            n = torchstain.normalizers.MacenkoNormalizer(backend="torch")
            n.fit(ref_t.cpu())
            return n.normalize(I=img_t.cpu(), stains=False)

        out[f"torchstain_macenko_{size}_s"] = timeit(theirs, torch.device("cpu"),
                                                     2 if quick else 3)
        out["macenko_speedup_vs_torchstain"] = out[f"torchstain_macenko_{size}_s"] / out[key]
    except ImportError:
        out[f"torchstain_macenko_{size}_s"] = None
    del rng
    return out


def bench_predict(device: torch.device, quick: bool, amp: str) -> dict:
    """Predict a tiled TIFF (tissue everywhere) vs the raw forward on the same tiles."""
    import tifffile

    from stainadapt.inference import sliding_window_predict
    from stainadapt.models.unet import SegmentationNet

    out: dict = {}
    size = 1024 if quick else 2048
    tile = 256
    model = SegmentationNet("resnet34").to(device).eval()
    rng = np.random.default_rng(0)
    img = (rng.random((size, size, 3)) * 120 + 60).astype(np.uint8)  # no glass: no skips
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slide.tif"
        tifffile.imwrite(path, img, tile=(256, 256), compression="zlib")
        t0 = time.perf_counter()
        sliding_window_predict(model, img, tile, overlap=0, batch_size=4, device=device,
                               amp=amp, min_tissue=0.0)
        _sync(device)
        t_pred = time.perf_counter() - t0
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255)
    tiles = x.unfold(2, tile, tile).unfold(3, tile, tile).permute(0, 2, 3, 1, 4, 5)
    tiles = tiles.reshape(-1, 3, tile, tile)

    def forward():
        with torch.inference_mode(), _autocast(device, amp):
            for i in range(0, len(tiles), 4):
                model(tiles[i:i + 4].to(device))

    t_fwd = timeit(forward, device, 1, warmup=1)
    mpix = size * size / 1e6
    out["predict_mpix_per_s"] = mpix / t_pred
    out["forward_mpix_per_s"] = mpix / t_fwd
    out["predict_vs_forward_ratio"] = out["predict_mpix_per_s"] / out["forward_mpix_per_s"]
    # Peak memory is a whole-process figure: measure it in a child predicting a slide.
    mem_size = 2048 if quick else 8192
    child = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("predict_memory.py")),
         "--size", str(mem_size), "--device", str(device)],
        capture_output=True, text=True, check=False)
    try:
        mem = json.loads(child.stdout.strip().splitlines()[-1])
        out["predict_peak_rss_mb"] = mem.get("peak_rss_mb")
        out["predict_peak_rss_slide_px"] = mem_size
    except (IndexError, json.JSONDecodeError):
        out["predict_peak_rss_mb"] = None
        out["predict_peak_rss_error"] = child.stderr.strip().splitlines()[-1:] or "no output"
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = main()
    print(json.dumps(result, indent=2))
    sys.exit(0)
