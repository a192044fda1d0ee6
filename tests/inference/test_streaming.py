"""The streamed TIFF path: bounded memory, same pixels as the in-memory path."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile
from conftest import blob_image

from stainadapt.inference import SlidingWindowPredictor, predict_tiff_streamed


def _slide(h: int, w: int) -> np.ndarray:
    """Glass with a band of tissue blobs across the middle (cheap to build and compress)."""
    img = np.full((h, w, 3), 240, np.uint8)
    y0 = h // 3
    img[y0 : y0 + 512, : min(w, 1024)] = blob_image(512, min(w, 1024), seed=1, n=30)
    return img


def test_streamed_matches_in_memory(tmp_path, blob_net):
    img = blob_image(300, 420, seed=2, n=20)
    tifffile.imwrite(tmp_path / "s.tif", img, tile=(64, 64), photometric="rgb")
    ref = SlidingWindowPredictor(blob_net, 64, 16, min_tissue=0).predict(img)
    pred = SlidingWindowPredictor(blob_net, 64, 16, min_tissue=0)
    shape = predict_tiff_streamed(
        pred, tmp_path / "s.tif", tmp_path / "m.tif", 0.5, prob_path=tmp_path / "p.tif"
    )
    assert shape == (300, 420)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == 8  # zlib / deflate
        mask = page.asarray()
    np.testing.assert_array_equal(mask, (ref > 0.5).astype(np.uint8) * 255)
    prob = tifffile.imread(tmp_path / "p.tif")
    assert np.abs(prob.astype(int) - np.rint(ref * 255)).max() <= 1


def _streamed_peak(tmp_path, blob_net, h: int, w: int):
    src = tmp_path / f"slide{h}.tif"
    tifffile.imwrite(src, _slide(h, w), tile=(256, 256), compression="zlib", photometric="rgb")
    pred = SlidingWindowPredictor(blob_net, 128, 32)
    out = tmp_path / f"mask{h}.tif"
    tracemalloc.start()
    try:
        predict_tiff_streamed(pred, src, out, 0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, pred, out


def test_streaming_4096_memory_bounded(tmp_path, blob_net):
    h = w = 4096
    full_rgb = h * w * 3  # 48 MiB: what reading the slide whole would take
    peak, pred, out = _streamed_peak(tmp_path, blob_net, h, w)
    # numpy working set (bands, decoded tile rows, output strips): ~13 MiB for a 4096-wide
    # slide, a quarter of one slide; the torch accumulators add 2 x 128 x 4096 x 4 B.
    assert peak < full_rgb / 3, f"peak {peak / 2**20:.1f} MiB"
    # ... and it does not grow with the slide's height.
    half_peak, _, _ = _streamed_peak(tmp_path, blob_net, h // 2, w)
    assert peak < half_peak * 1.25, (peak, half_peak)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.shape == (h, w) and page.is_tiled
        mask = page.asarray()
    assert mask[: h // 3 - 64].max() == 0  # glass
    assert mask[h // 3 : h // 3 + 512, :1024].mean() > 0  # blobs found
    assert pred.stats.tiles_skipped > pred.stats.tiles_total * 0.8


def test_interrupted_stream_leaves_no_partial_output(tmp_path, blob_net):
    img = blob_image(200, 300, seed=9)
    tifffile.imwrite(tmp_path / "s.tif", img, tile=(64, 64), photometric="rgb")
    out = tmp_path / "out"
    out.mkdir()

    calls = []

    def boom(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    pred = SlidingWindowPredictor(blob_net, 64, 16, min_tissue=0, batch_size=1)  # 1 band/pass
    with pytest.raises(KeyboardInterrupt):
        predict_tiff_streamed(
            pred, tmp_path / "s.tif", out / "m.tif", 0.5, out / "p.tif", progress=boom
        )
    assert list(out.iterdir()) == []  # neither the masks nor their temporary files


def _halve(a: np.ndarray, binary: bool) -> np.ndarray:
    """The 2x2 reduction of the pyramid (edge row/column repeated when odd)."""
    a = a.astype(np.uint16)
    if a.shape[0] % 2:
        a = np.concatenate([a, a[-1:]])
    if a.shape[1] % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    s = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
    return np.where(s >= 510, 255, 0).astype(np.uint8) if binary else ((s + 2) // 4).astype(
        np.uint8)


@pytest.mark.parametrize("shape", [(1280, 1100), (1101, 1333), (2100, 500)])
def test_pyramid_levels_are_halvings_of_level_0(tmp_path, blob_net, shape):
    """Whatever the height (a multiple of the tile or not, odd), every level is complete."""
    from stainadapt.inference import predict_rows_to_tiff
    from stainadapt.inference.predictor import ArrayRows
    from stainadapt.inference.streaming import pyramid_shapes

    img = blob_image(*shape, seed=4, n=25)
    pred = SlidingWindowPredictor(blob_net, 128, 32, min_tissue=0)
    smallest = predict_rows_to_tiff(pred, ArrayRows(img), tmp_path / "m.tif", 0.5,
                                    tmp_path / "p.tif", mpp=0.5)
    for name, binary in (("m.tif", True), ("p.tif", False)):
        with tifffile.TiffFile(tmp_path / name) as tif:
            levels = [lv.asarray() for lv in tif.series[0].levels]
        assert [lv.shape for lv in levels] == [shape, *pyramid_shapes(shape)]
        for above, below in zip(levels, levels[1:], strict=False):
            np.testing.assert_array_equal(below, _halve(above, binary))
        if binary:
            np.testing.assert_array_equal(smallest, levels[-1])


def test_heap_limit_is_idempotent_and_never_raises():
    import sys

    from stainadapt.inference.heap import limit_heap_growth, release_free_memory

    first = limit_heap_growth()
    assert limit_heap_growth() is first
    release_free_memory()
    if not sys.platform.startswith("linux"):
        assert first is False
