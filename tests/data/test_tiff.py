"""The TIFF region reader: every layout reads back the pixels written."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from stainadapt.data.tiff import TiffReader


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "layout",
    [
        {"rowsperstrip": 7},
        {"tile": (48, 80), "compression": "zlib"},
        {"tile": (64, 64), "planarconfig": "separate", "bigtiff": True},
    ],
    ids=["striped", "tiled-zlib-odd", "planar-bigtiff"],
)
def test_rows_and_regions_of_every_layout(tmp_path, layout):
    img = _image(150, 230, seed=4)
    data = np.moveaxis(img, 2, 0) if layout.get("planarconfig") == "separate" else img
    tifffile.imwrite(tmp_path / "x.tif", data, photometric="rgb", **layout)
    with TiffReader(tmp_path / "x.tif") as reader:
        assert reader.shape == (150, 230) and reader.samples == 3
        for y0, y1 in [(0, 64), (40, 104), (100, 150), (149, 150)]:
            np.testing.assert_array_equal(reader.read_rows(y0, y1), img[y0:y1])
        for y0, y1, x0, x1 in [(5, 77, 33, 190), (140, 170, 200, 260), (-3, 2, -1, 1)]:
            want = img[max(0, y0) : y1, max(0, x0) : x1]
            np.testing.assert_array_equal(reader.read_region(y0, y1, x0, x1), want)


def test_pyramid_level0_and_grey16(tmp_path):
    img = _image(128, 192, seed=6)
    with tifffile.TiffWriter(tmp_path / "pyr.tif") as tw:
        tw.write(img, tile=(64, 64), photometric="rgb", subifds=1)
        tw.write(img[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
    with TiffReader(tmp_path / "pyr.tif") as reader:
        assert reader.shape == (128, 192)
        np.testing.assert_array_equal(reader.read_rows(0, 128), img)
    grey = img[..., 0].astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "g.tif", grey, tile=(64, 64))
    with TiffReader(tmp_path / "g.tif") as reader:
        assert reader.dtype == np.uint16 and reader.segment_rows == 64
        np.testing.assert_array_equal(reader.read_rows(10, 20), np.repeat(img[10:20, :, :1], 3, 2))
        np.testing.assert_array_equal(reader.read_region(3, 9, 60, 70)[..., 0], grey[3:9, 60:70])


def test_small_cache_reads_the_same(tmp_path):
    img = _image(100, 120, seed=2)
    tifffile.imwrite(tmp_path / "t.tif", img, photometric="rgb", tile=(16, 16))
    rng = np.random.default_rng(0)
    with TiffReader(tmp_path / "t.tif", cache_segments=2) as reader:
        for _ in range(20):
            y0, x0 = rng.integers(0, 100), rng.integers(0, 120)
            y1, x1 = rng.integers(y0, 110), rng.integers(x0, 130)
            np.testing.assert_array_equal(reader.read_region(y0, y1, x0, x1), img[y0:y1, x0:x1])
