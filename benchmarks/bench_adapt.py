"""What test-time adaptation (``predict --adapt bn``) adds to predicting a large TIFF.

Run: ``python -m pytest benchmarks/bench_adapt.py`` (pytest-benchmark prints the table;
``extra_info`` holds the ratio). A synthetic tiled TIFF of ``STAINADAPT_BENCH_TTA_SIZE``
pixels square (default 2048) is predicted streamed, window ``STAINADAPT_BENCH_TTA_TILE``
(default 256), resnet18 G; the adaptation pass is the sample of
``STAINADAPT_BENCH_TTA_WINDOWS`` windows (default 64) read from the TIFF window by window
plus AdaBN over it. ``ratio`` = adaptation time / prediction time. The sample is bounded,
so the ratio falls as the slide grows (a whole slide has thousands of windows).
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import pytest
import tifffile
import torch

from stainadapt.inference import OUTPUT_TILE, SlidingWindowPredictor, predict_tiff_streamed
from stainadapt.inference.adapt import AdaptSettings, adapt_model, sample_windows
from stainadapt.models.unet import SegmentationNet

SIZE = int(os.environ.get("STAINADAPT_BENCH_TTA_SIZE", "2048"))
TILE = int(os.environ.get("STAINADAPT_BENCH_TTA_TILE", "256"))
WINDOWS = int(os.environ.get("STAINADAPT_BENCH_TTA_WINDOWS", "64"))
ROUNDS = int(os.environ.get("STAINADAPT_BENCH_ROUNDS", "2"))


def _slide(path, size: int) -> None:
    """Pink tissue with dark round blobs and a glass border, as a tiled TIFF."""
    rng = np.random.default_rng(0)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = (205, 160, 195)
    yy, xx = np.ogrid[:size, :size]
    for _ in range(size * size // 40000):
        cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(15, 60))]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(40, 120, 3)
    img[:, : size // 8] = 245  # glass, passed over by the sample and the predictor
    tifffile.imwrite(path, img, photometric="rgb", tile=(OUTPUT_TILE, OUTPUT_TILE),
                     compression="zlib")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-adapt")
    _slide(root / "slide.tif", SIZE)
    torch.manual_seed(0)
    return root, SegmentationNet("resnet18").eval()


def test_adaptation_pass_vs_prediction(benchmark, setup):
    root, net = setup
    device = torch.device("cpu")
    settings = AdaptSettings("bn", windows=WINDOWS)

    def adapt_pass() -> None:
        model = copy.deepcopy(net)
        predictor = SlidingWindowPredictor(model, TILE, device=device)
        windows, _ = sample_windows([root / "slide.tif"], TILE, WINDOWS, stream_min_pixels=0)
        batch = torch.from_numpy(windows).permute(0, 3, 1, 2)
        adapt_model(model, batch, settings, predictor.model_input, device)

    benchmark.group = f"adapt-vs-predict-{SIZE}px"
    benchmark.pedantic(adapt_pass, rounds=ROUNDS, iterations=1)
    predictor = SlidingWindowPredictor(copy.deepcopy(net), TILE, device=device)
    started = time.perf_counter()
    predict_tiff_streamed(predictor, root / "slide.tif", root / "mask.tif", 0.5)
    predict_s = time.perf_counter() - started
    adapt_s = benchmark.stats.stats.mean
    benchmark.extra_info.update(predict_s=round(predict_s, 3), adapt_s=round(adapt_s, 3),
                                ratio=round(adapt_s / predict_s, 3),
                                windows_predicted=predictor.stats.tiles_total)
    print(f"\nadaptation {adapt_s:.2f} s, prediction {predict_s:.2f} s "
          f"({predictor.stats.tiles_total} windows): ratio {adapt_s / predict_s:.2f}")
