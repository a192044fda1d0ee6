"""Objects of tiled mask TIFFs: merged across tile/band borders, same as in memory."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from objshapes import disc

from stainadapt.objects import InstanceOptions, objects_from_arrays, objects_from_tiff
from stainadapt.objects.tiled import open_mask_tiff, read_mask_region


def _write(path, array, **kw):
    tifffile.imwrite(path, array, photometric="minisblack", compression="zlib", **kw)
    return path


def _same(a, b, prob_tol=0.0):
    assert len(a) == len(b)
    for o, q in zip(a, b, strict=True):
        assert (o.id, o.area_px, o.bbox) == (q.id, q.area_px, q.bbox)
        assert o.perimeter_px == pytest.approx(q.perimeter_px)
        assert o.eccentricity == pytest.approx(q.eccentricity)
        if prob_tol:
            assert o.mean_probability == pytest.approx(q.mean_probability, abs=prob_tol)
        assert len(o.polygons) == len(q.polygons)
        for p, r in zip(o.polygons, q.polygons, strict=True):
            assert all(np.array_equal(x, y) for x, y in zip(p, r, strict=True))


def test_glomerulus_across_tile_borders_is_one_polygon(tmp_path):
    shape = (100, 120)
    # Centred on the corner of four 32 px tiles: cut by a tile column and a band border.
    mask = disc(shape, 64, 64, 20)
    path = _write(tmp_path / "m.tif", mask.astype(np.uint8) * 255, tile=(32, 32))
    for band in (16, 32, 7):
        (o,) = objects_from_tiff(path, None, InstanceOptions(simplify=0), band=band)
        assert o.area_px == mask.sum()
        assert o.bbox == (44, 44, 85, 85)
        assert len(o.polygons) == 1 and len(o.polygons[0]) == 1
    _same(
        objects_from_tiff(path, None, InstanceOptions(), band=16),
        objects_from_arrays(mask, None, InstanceOptions()),
    )


def test_tiled_equals_in_memory_on_a_busy_mask(tmp_path):
    rng = np.random.default_rng(7)
    shape = (300, 340)
    mask = np.zeros(shape, bool)
    for _ in range(25):
        mask |= disc(shape, rng.uniform(0, 300), rng.uniform(0, 340), rng.uniform(2, 30))
    # A U shape whose arms meet only below the band they start in, and a diagonal chain
    # crossing a band border through corner contacts only.
    mask[40:90, 250:255] = mask[40:90, 270:275] = mask[85:90, 250:275] = True
    for i in range(10):
        mask[28 + i, 200 + i] = True
    prob = np.where(mask, rng.uniform(0.5, 1, shape), rng.uniform(0, 0.5, shape))
    prob8 = np.rint(prob * 255).astype(np.uint8)
    m_path = _write(tmp_path / "m.tif", mask.astype(np.uint8) * 255, tile=(32, 32))
    p_path = _write(tmp_path / "p.tif", prob8, tile=(32, 32))
    opts = InstanceOptions(min_area=4, fill_holes=True)
    tiled = objects_from_tiff(m_path, p_path, opts, band=32)
    memory = objects_from_arrays(mask, prob8 / 255.0, opts)
    _same(tiled, memory, prob_tol=1e-6)
    assert len(tiled) > 10
    u = [o for o in tiled if o.bbox[0] == 250]
    assert len(u) == 1 and u[0].area_px == 50 * 5 * 2 + 5 * 15
    # Striped TIFFs (rows per strip) work too.
    s_path = _write(tmp_path / "s.tif", mask.astype(np.uint8) * 255, rowsperstrip=13)
    _same(objects_from_tiff(s_path, None, opts), objects_from_arrays(mask, None, opts))


def test_region_reader_matches_imread(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (77, 101), dtype=np.uint8)
    for kw in ({"tile": (16, 32)}, {"rowsperstrip": 10}):
        path = _write(tmp_path / "r.tif", data, **kw)
        with open_mask_tiff(path, cache_tiles=3) as reader:
            assert reader.shape == data.shape
            for _ in range(30):
                y0, x0 = rng.integers(0, 77), rng.integers(0, 101)
                y1, x1 = rng.integers(y0, 90), rng.integers(x0, 110)
                assert np.array_equal(read_mask_region(reader, y0, y1, x0, x1), data[y0:y1, x0:x1])


def test_touching_pair_across_band_is_split(tmp_path):
    shape = (128, 160)
    mask = disc(shape, 64, 55, 30) | disc(shape, 64, 105, 30)
    path = _write(tmp_path / "m.tif", mask.astype(np.uint8) * 255, tile=(32, 32))
    objs = objects_from_tiff(path, None, InstanceOptions(), band=32)
    assert len(objs) == 2 and sum(o.area_px for o in objs) == mask.sum()
