"""Window reads from one Aperio-style slide: OpenSlide against tifffile.

Run: ``python -m pytest benchmarks/bench_slides.py --benchmark-group-by=group`` (one
table per case), or ``python benchmarks/bench_slides.py [--size 4096]`` for the ratio
as JSON. The slide is written once (JPEG tiles of 256 px, levels 1 and 4, as a scanner
writes them); each round reads the same 32 windows of 512 px at random level-0 places
through :func:`stainadapt.data.slides.open_slide` with each backend, and (``view``) the
whole slide at downsample 2, as ``predict`` reads it for a model at twice the slide's
mpp, and (``bands``) the whole slide at level 0 the way ``predict`` reads it with
256 px windows: one full-width band of 256 rows per call, every 192 rows (a band holds
a whole row of windows, so OpenSlide's cost per call is paid once per row of windows,
not once per window). ``ratio`` is tifffile time / OpenSlide time (above 1: OpenSlide
is faster).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from stainadapt.data.slides import open_slide
from stainadapt.testing.slides import write_svs

SIZE = 4096
WINDOW = 512
N_WINDOWS = 32
ROUNDS = 3
BACKENDS = ("openslide", "tifffile")


def make_slide(folder: Path, size: int = SIZE) -> Path:
    """A ``size``-square slide of smooth colour with texture (JPEG compresses it as tissue)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([200 - 80 * yy, 150 + 60 * xx, 190 - 40 * xx * yy], axis=-1)
    img += rng.normal(0, 12, img.shape)
    return write_svs(folder / "bench.svs", np.clip(img, 0, 255).astype(np.uint8),
                     mpp=0.25, power=40, factors=(4, 16), compression="jpeg")


def windows(size: int, n: int = N_WINDOWS) -> list[tuple[int, int]]:
    rng = np.random.default_rng(1)
    return [(int(x), int(y)) for x, y in rng.integers(0, size - WINDOW, (n, 2))]


def read_windows(path: Path, backend: str, places: list[tuple[int, int]]) -> int:
    with open_slide(path, backend=backend) as slide:
        return sum(int(slide.read_region(x, y, WINDOW, WINDOW)[0, 0, 0]) for x, y in places)


def read_view(path: Path, backend: str) -> int:
    with open_slide(path, backend=backend) as slide:
        view = slide.view(2.0)
        return sum(int(view.read_rows(y, y + 256)[0, 0, 0]) for y in range(0, view.shape[0], 256))


def read_bands(path: Path, backend: str, tile: int = 256, overlap: int = 64) -> int:
    from stainadapt.inference.windows import window_starts

    with open_slide(path, backend=backend) as slide:
        height = slide.shape[0]
        return sum(int(slide.read_rows(y, y + tile)[0, 0, 0])
                   for y in window_starts(height, tile, overlap))


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return make_slide(tmp_path_factory.mktemp("bench-slides"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_windows(benchmark, slide, backend):
    benchmark.group = f"{N_WINDOWS} windows of {WINDOW} px"
    benchmark.pedantic(read_windows, args=(slide, backend, windows(SIZE)), rounds=ROUNDS,
                       iterations=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_view_downsample_2(benchmark, slide, backend):
    benchmark.group = "whole slide at downsample 2"
    benchmark.pedantic(read_view, args=(slide, backend), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bands_as_predict_reads(benchmark, slide, backend):
    benchmark.group = "whole slide at level 0 in predict's bands"
    benchmark.pedantic(read_bands, args=(slide, backend), rounds=ROUNDS, iterations=1)


def _best(fn, *args) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_slide(Path(tmp), args.size)
        places = windows(args.size)
        result: dict[str, float | int] = {"size": args.size, "windows": N_WINDOWS,
                                          "window": WINDOW}
        for case, fn, extra in (
            ("windows", read_windows, (places,)),
            ("view", read_view, ()),
            ("bands", read_bands, ()),
        ):
            t = {b: _best(fn, path, b, *extra) for b in BACKENDS}
            result[f"{case}_openslide_s"] = round(t["openslide"], 4)
            result[f"{case}_tifffile_s"] = round(t["tifffile"], 4)
            result[f"{case}_ratio"] = round(t["tifffile"] / t["openslide"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
