"""Instances from masks: watershed split, specks, holes, measurements and CSV areas."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from objshapes import disc

from stainadapt.errors import InputError
from stainadapt.objects import InstanceOptions, label_instances, objects_from_arrays, write_csv


def _two_touching(shape=(120, 170)):
    # Centres 50 px apart, radius 30: D = 1.67 r.
    return disc(shape, 60, 55, 30) | disc(shape, 60, 105, 30)


def test_two_touching_discs_are_two_instances():
    mask = _two_touching()
    objs = objects_from_arrays(mask, None, InstanceOptions(simplify=0))
    assert len(objs) == 2
    assert sum(o.area_px for o in objs) == mask.sum()
    left, right = objs
    assert left.centroid[0] < 80 < right.centroid[0]
    # Each half is about one disc.
    for o in objs:
        assert abs(o.area_px - mask.sum() / 2) < 0.08 * mask.sum()
    labels = label_instances(mask)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert np.array_equal(labels > 0, mask)
    assert [int((labels == k).sum()) for k in (1, 2)] == [o.area_px for o in objs]


def test_no_split_and_shallow_neck_stay_one():
    mask = _two_touching()
    assert len(objects_from_arrays(mask, None, InstanceOptions(split=False))) == 1
    # Centres 10 px apart: one slightly elongated blob, not two glomeruli.
    blob = disc((100, 100), 50, 45, 30) | disc((100, 100), 50, 55, 30)
    assert len(objects_from_arrays(blob, None, InstanceOptions())) == 1
    # Separate discs are separate even without splitting.
    apart = disc((100, 200), 50, 40, 20) | disc((100, 200), 50, 150, 20)
    assert len(objects_from_arrays(apart, None, InstanceOptions(split=False))) == 2


@pytest.mark.parametrize(
    ("distance", "depth", "n"),
    [(1.0, 0.15, 1), (1.2, 0.15, 2), (1.0, 0.05, 2), (1.3, 0.25, 1), (1.5, 0.25, 2)],
)
def test_split_depth_decides(distance, depth, n):
    r = 30
    mask = disc((100, 200), 50, 50, r) | disc((100, 200), 50, 50 + distance * r, r)
    assert len(objects_from_arrays(mask, None, InstanceOptions(split_depth=depth))) == n


def test_specks_removed_in_pixels_or_square_microns():
    mask = disc((80, 80), 40, 40, 15)
    mask[2:5, 2:5] = True  # 9 px speck
    assert len(objects_from_arrays(mask, None, InstanceOptions(min_area=10))) == 1
    assert len(objects_from_arrays(mask, None, InstanceOptions(min_area=9))) == 2
    # 0.5 um/px: 9 px = 2.25 um2
    assert len(objects_from_arrays(mask, None, InstanceOptions(min_area=2.0, mpp=0.5))) == 2
    assert len(objects_from_arrays(mask, None, InstanceOptions(min_area=2.5, mpp=0.5))) == 1


def test_holes_filled_and_specks_in_holes_swallowed():
    ring = disc((90, 90), 45, 45, 30) & ~disc((90, 90), 45, 45, 15)
    mask = ring | disc((90, 90), 45, 45, 3)  # a speck in the hole
    filled = objects_from_arrays(mask, None, InstanceOptions(min_area=1, simplify=0))
    assert len(filled) == 1
    assert filled[0].area_px == disc((90, 90), 45, 45, 30).sum()
    assert len(filled[0].polygons) == 1 and len(filled[0].polygons[0]) == 1
    kept = objects_from_arrays(mask, None, InstanceOptions(min_area=1, fill_holes=False))
    assert len(kept) == 2
    big = max(kept, key=lambda o: o.area_px)
    assert big.area_px == ring.sum()
    assert len(big.polygons[0]) == 2  # exterior + one hole


def test_measurements_and_probability():
    mask = disc((100, 100), 50, 50, 20)
    prob = np.where(mask, 0.8, 0.1).astype(np.float32)
    (o,) = objects_from_arrays(mask, prob, InstanceOptions())
    assert o.mean_probability == pytest.approx(0.8)
    assert o.bbox == (30, 30, 71, 71)
    assert o.centroid == pytest.approx((50.5, 50.5))
    assert o.eccentricity < 0.1
    row = o.measurements(mpp=0.5)
    assert row["area_um2"] == pytest.approx(mask.sum() * 0.25)
    assert row["equivalent_diameter_um"] == pytest.approx(np.sqrt(4 * row["area_um2"] / np.pi))
    assert row["perimeter_um"] == pytest.approx(0.5 * o.perimeter_px)
    assert 2 * np.pi * 20 * 0.9 < o.perimeter_px < 2 * np.pi * 20 * 1.1


@pytest.mark.parametrize("mpp", [None, 0.25])
def test_csv_areas_equal_pixel_counts(tmp_path, mpp):
    rng = np.random.default_rng(3)
    mask = np.zeros((200, 260), dtype=bool)
    for _ in range(9):
        mask |= disc(mask.shape, rng.uniform(20, 180), rng.uniform(20, 240), rng.uniform(6, 25))
    opts = InstanceOptions(min_area=0, mpp=mpp)
    objs = objects_from_arrays(mask, None, opts)
    labels = label_instances(mask, opts)
    path = write_csv(tmp_path / "a.csv", objs, mpp)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    unit = "um" if mpp else "px"
    assert len(rows) == labels.max() == len(objs) > 3
    scale = (mpp or 1.0) ** 2
    for row in rows:
        count = int((labels == int(row["id"])).sum())
        assert float(row[f"area_{unit}2"]) == pytest.approx(count * scale, rel=1e-9)
        x0, y0, x1, y1 = (int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
        ys, xs = np.nonzero(labels == int(row["id"]))
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert sum(float(r[f"area_{unit}2"]) for r in rows) == pytest.approx(mask.sum() * scale)


def test_options_validated():
    for kwargs in (
        {"mpp": 0},
        {"mpp": -1.0},
        {"min_area": -1},
        {"split_depth": 1.5},
        {"simplify": -1},
    ):
        with pytest.raises(InputError):
            InstanceOptions(**kwargs)


def test_empty_and_full_masks():
    assert objects_from_arrays(np.zeros((10, 10), bool)) == []
    (o,) = objects_from_arrays(np.ones((10, 12), bool), options=InstanceOptions(min_area=0))
    assert o.area_px == 120 and o.bbox == (0, 0, 12, 10)
