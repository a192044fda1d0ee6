"""GeoJSON outlines: RFC 7946 rules, QuPath properties, and a round trip to pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from objshapes import disc, rasterise

from stainadapt.objects import InstanceOptions, objects_from_arrays, write_geojson
from stainadapt.objects.geometry import mask_rings, ring_area


def _signed_area(ring) -> float:
    a = np.asarray(ring, dtype=np.float64)
    return 0.5 * float(np.sum(a[:-1, 0] * a[1:, 1] - a[1:, 0] * a[:-1, 1]))


def _check_rings(polygon: list) -> None:
    """RFC 7946 3.1.6: linear rings closed, >= 4 positions; exterior CCW, holes CW."""
    for k, ring in enumerate(polygon):
        assert len(ring) >= 4
        assert ring[0] == ring[-1]
        assert all(len(p) == 2 for p in ring)
        area = _signed_area(ring)
        assert area > 0 if k == 0 else area < 0


def _scene():
    shape = (140, 200)
    mask = disc(shape, 60, 55, 30) | disc(shape, 60, 105, 30)  # touching pair
    mask |= disc(shape, 115, 170, 18) & ~disc(shape, 115, 170, 7)  # ring with a hole
    mask[5:8, 190:198] = True  # a small bar at the border
    mask[130:, :6] = True  # a corner piece
    return mask


@pytest.mark.parametrize("simplify", [0.0, 1.0])
def test_geojson_rules_and_round_trip(tmp_path, simplify):
    mask = _scene()
    prob = np.where(mask, 0.9, 0.0).astype(np.float32)
    opts = InstanceOptions(min_area=1, fill_holes=False, simplify=simplify)
    objs = objects_from_arrays(mask, prob, opts)
    path = write_geojson(tmp_path / "img.geojson", objs, "img")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    feats = data["features"]
    assert len(feats) == len(objs) == 5
    ids = set()
    for feat, o in zip(feats, objs, strict=True):
        assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
        _check_rings(feat["geometry"]["coordinates"])
        props = feat["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == "Glomerulus"
        assert props["measurements"]["mean_probability"] == pytest.approx(0.9)
        assert props["glomerulus_id"] == o.id
        assert props["name"] == f"Glomerulus {o.id}"
        ids.add(feat["id"])
        back = rasterise(feat["geometry"]["coordinates"], mask.shape)
        if simplify == 0:
            assert back.sum() == o.area_px
            assert not (back & ~mask).any()
        else:  # simplified outlines stay within a pixel of the exact ones
            assert abs(int(back.sum()) - o.area_px) < 0.1 * o.area_px + 10
    assert len(ids) == len(feats)
    holes = [f for f in feats if len(f["geometry"]["coordinates"]) == 2]
    assert len(holes) == 1
    # Exact outlines cover the mask exactly, object by object.
    if simplify == 0:
        union = np.zeros(mask.shape, bool)
        for f in feats:
            union |= rasterise(f["geometry"]["coordinates"], mask.shape)
        assert np.array_equal(union, mask)


def test_ids_stable_and_integer_coordinates(tmp_path):
    objs = objects_from_arrays(disc((50, 50), 25, 25, 10), options=InstanceOptions(simplify=0))
    a = write_geojson(tmp_path / "a.geojson", objs, "slide1").read_text()
    b = write_geojson(tmp_path / "b.geojson", objs, "slide1").read_text()
    assert a == b
    coords = json.loads(a)["features"][0]["geometry"]["coordinates"][0]
    assert all(isinstance(v, int) for p in coords for v in p)


def test_diagonal_touch_is_one_ring():
    m = np.zeros((6, 6), bool)
    m[1, 1] = m[2, 2] = m[3, 3] = m[1, 3] = True
    rings = mask_rings(m)
    assert len(rings) == 1 and ring_area(rings[0]) == 4
    assert np.array_equal(rasterise([rings[0].tolist()], m.shape), m)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.2, 0.7))
def test_random_masks_trace_exactly(seed, density):
    rng = np.random.default_rng(seed)
    m = rng.random((12, 15)) < density
    rings = mask_rings(m)
    assert sum(ring_area(r) for r in rings) == m.sum()
    for r in rings:
        assert np.array_equal(r[0], r[-1]) and len(r) >= 5
    ext = [r for r in rings if ring_area(r) > 0]
    holes = [r for r in rings if ring_area(r) < 0]
    back = np.zeros(m.shape, bool)
    for r in ext:
        back ^= rasterise([r.tolist()], m.shape)
    for r in holes:
        back ^= rasterise([r.tolist()], m.shape)
    assert np.array_equal(back, m)
