"""Our Macenko against torchstain's (torch backend), in the same process.

Run: ``python -m pytest benchmarks/bench_normalizers.py --benchmark-group-by=group``
(pytest-benchmark prints one table per case). Cases:

* ``fit+transform-1024`` / ``fit+transform-4096``: fit on scikit-image's
  immunohistochemistry image (512 px), then normalise one N x N image (the same image
  tiled). Target at 4096: at least 4x faster than torchstain.
* ``batch-64x256``: 64 tiles of 256 px, each normalised with its own statistics; ours in
  one call, torchstain one tile at a time. Target: at least 3x faster.

Both sides run with the same torch thread count (``STAINADAPT_BENCH_THREADS``, default
1: the machine is shared) and produce uint8 images; torchstain is called with
``stains=False`` so it does not compute the separate H and E images.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from stainadapt.normalizers import Macenko

torchstain = pytest.importorskip("torchstain")
skdata = pytest.importorskip("skimage.data")

THREADS = int(os.environ.get("STAINADAPT_BENCH_THREADS", "1"))
ROUNDS = int(os.environ.get("STAINADAPT_BENCH_ROUNDS", "3"))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)


def _ihc() -> torch.Tensor:
    return torch.from_numpy(skdata.immunohistochemistry()).permute(2, 0, 1).contiguous()


def _big(size: int) -> torch.Tensor:
    """The 512 px image tiled with flips (no seams) up to ``size`` x ``size``."""
    ihc = skdata.immunohistochemistry()
    pair = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    quad = np.concatenate([pair, pair[::-1]], axis=0)
    reps = size // quad.shape[0] + 1
    big = np.tile(quad, (reps, reps, 1))[:size, :size]
    return torch.from_numpy(np.ascontiguousarray(big)).permute(2, 0, 1).contiguous()


def _tiles(n: int = 64, size: int = 256) -> torch.Tensor:
    big = _big(2048)
    tiles = big.unfold(1, size, size).unfold(2, size, size)  # (3, 8, 8, s, s)
    tiles = tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size)
    return tiles[:n].contiguous()


def ours_fit_transform(ref: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    return Macenko().fit(ref)(img)


def theirs_fit_transform(ref: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    norm = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    norm.fit(ref)
    out, _, _ = norm.normalize(I=img, stains=False)
    return out


@pytest.mark.parametrize("size", [1024, 4096])
@pytest.mark.parametrize("impl", ["stainadapt", "torchstain"])
def test_fit_transform(benchmark, size, impl):
    benchmark.group = f"fit+transform-{size}"
    ref, img = _ihc(), _big(size)
    fn = ours_fit_transform if impl == "stainadapt" else theirs_fit_transform
    out = benchmark.pedantic(fn, args=(ref, img), rounds=ROUNDS, iterations=1)
    assert out.numel() == img.numel()


@pytest.mark.parametrize("impl", ["stainadapt", "torchstain"])
def test_batch_64x256(benchmark, impl):
    benchmark.group = "batch-64x256"
    ref, tiles = _ihc(), _tiles()
    ours = Macenko().fit(ref)
    theirs = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    theirs.fit(ref)

    def run_ours():
        return ours(tiles)

    def run_theirs():
        return [theirs.normalize(I=t, stains=False)[0] for t in tiles]

    fn = run_ours if impl == "stainadapt" else run_theirs
    out = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1)
    assert len(out) == 64
