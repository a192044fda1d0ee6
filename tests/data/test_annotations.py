"""QuPath GeoJSON in, shapely polygons and masks out (``stainadapt.data.annotations``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("shapely")

from shapely.geometry import Point, Polygon, box  # noqa: E402

from stainadapt.data.annotations import (  # noqa: E402
    annotation_centre,
    check_within,
    parse_annotations,
    rasterize,
    read_annotations,
    split_annotations,
)
from stainadapt.errors import InputError  # noqa: E402

SQUARE = [[[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]]]
HOLE = [[150, 150], [250, 150], [250, 250], [150, 250], [150, 150]]


def feature(coords, gtype="Polygon", cls="Glomerulus", kind="annotation", **extra):
    props = {"objectType": kind, **extra}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [0, 200, 0]}
    return {"type": "Feature", "geometry": {"type": gtype, "coordinates": coords},
            "properties": props}


def write(tmp_path, data, name="a.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_feature_collection_and_bare_list_read_alike(tmp_path):
    feats = [feature(SQUARE), feature([SQUARE[0], HOLE]), feature([[[0, 0], [5, 0], [0, 5],
                                                                     [0, 0]]], cls=None)]
    a = read_annotations(write(tmp_path, {"type": "FeatureCollection", "features": feats}))
    b = read_annotations(write(tmp_path, feats, "b.geojson"))
    assert [x.geometry.wkt for x in a] == [x.geometry.wkt for x in b]
    assert [x.classification for x in a] == ["Glomerulus", "Glomerulus", None]
    assert [x.object_type for x in a] == ["annotation"] * 3


def test_polygon_multipolygon_and_holes():
    multi = [SQUARE, [[[400, 400], [500, 400], [500, 500], [400, 500], [400, 400]]]]
    anns = parse_annotations([feature([SQUARE[0], HOLE]), feature(multi, "MultiPolygon")])
    holed, mp = anns[0].geometry, anns[1].geometry
    assert holed.geom_type == "Polygon" and len(holed.interiors) == 1
    assert holed.area == pytest.approx(200 * 200 - 100 * 100)
    assert mp.geom_type == "MultiPolygon" and len(mp.geoms) == 2
    assert mp.area == pytest.approx(200 * 200 + 100 * 100)


def test_points_and_lines_are_skipped_and_bowtie_repaired():
    bowtie = [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]
    anns = parse_annotations([
        feature([10, 10], "Point"),
        feature([[0, 0], [5, 5]], "LineString"),
        feature(bowtie),
    ])
    assert len(anns) == 1 and anns[0].index == 2
    assert anns[0].geometry.is_valid
    assert anns[0].geometry.area == pytest.approx(5000)


def test_qupath_02_object_type_and_string_class():
    f = {"type": "Feature", "id": "PathDetectionObject",
         "geometry": {"type": "Polygon", "coordinates": SQUARE},
         "properties": {"classification": "Glomerulus"}}
    (a,) = parse_annotations(f)
    assert a.object_type == "detection" and a.classification == "Glomerulus"


def test_classification_filter_and_regions():
    anns = parse_annotations([
        feature(SQUARE, cls="Glomerulus"),
        feature(SQUARE, cls="Glomerulus: sclerotic"),
        feature(SQUARE, cls="Tubule"),
        feature([[[0, 0], [900, 0], [900, 900], [0, 900], [0, 0]]], cls="Region*"),
        feature(SQUARE, cls=None),
        feature(SQUARE, cls=None, kind="cell"),
        feature(SQUARE, cls="Glomerulus", kind="tile"),
    ])
    every = split_annotations(anns)
    assert len(every.glomeruli) == 4 and len(every.regions) == 1
    glom = split_annotations(anns, glomerulus_class="glomerulus*")
    assert len(glom.glomeruli) == 2 and len(glom.regions) == 1
    exact = split_annotations(anns, glomerulus_class="Glomerulus", roi_class=None)
    assert len(exact.glomeruli) == 1 and exact.regions == ()
    with pytest.raises(InputError, match=r"a.geojson: no polygon of class 'Glom'.*Tubule"):
        split_annotations(anns, "a.geojson", glomerulus_class="Glom")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json at all", "not GeoJSON (invalid JSON at line 1"),
        ('{"type": "Topology"}', "not GeoJSON (expected a FeatureCollection"),
        ('[{"type": "Feature"}, 3]', "not GeoJSON (item 1 is not a Feature)"),
        (json.dumps([feature([1, 2], "Point")]), "no polygons (1 Point)"),
        (json.dumps([feature([[["a", 1]]])]), "feature 0: bad Polygon coordinates"),
    ],
)
def test_bad_files_are_one_line_naming_the_file(tmp_path, text, reason):
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_annotations(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and reason in msg and "\n" not in msg


def test_binary_file_is_not_geojson(tmp_path):
    path = tmp_path / "slide.geojson"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))
    with pytest.raises(InputError, match="not GeoJSON"):
        read_annotations(path)


def test_polygons_outside_the_slide_are_refused():
    anns = split_annotations(parse_annotations([feature(SQUARE)]), "a.geojson")
    check_within(anns, 400, 400, "a.svs")
    check_within(anns, 298, 298, "a.svs")  # 1 % margin
    with pytest.raises(InputError, match=r"a.geojson: polygon at x 100..300.*a.svs \(250x250"):
        check_within(anns, 250, 250, "a.svs")


def test_rasterize_rectangle_area_and_hole_at_half_scale():
    rect = box(30, 50, 230, 170)
    holed = Polygon(SQUARE[0], [HOLE])
    mask = rasterize([rect], (0, 0, 512, 512), (256, 256))
    assert mask.sum() == rect.area / 4
    mask = rasterize([holed], (0, 0, 512, 512), (256, 256))
    assert mask.sum() == holed.area / 4
    assert not mask[100, 100] and mask[60, 60]  # hole centre is background


def test_rasterize_island_in_hole_and_overlaps():
    outer = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(20, 20), (80, 20), (80, 80),
                                                                (20, 80)]])
    island = box(40, 40, 60, 60)
    mask = rasterize([island, outer], (0, 0, 100, 100), (100, 100))
    assert mask[50, 50] and not mask[30, 30] and mask[10, 10]
    assert mask.sum() == outer.area + island.area
    two = rasterize([box(0, 0, 60, 60), box(40, 40, 100, 100)], (0, 0, 100, 100), (100, 100))
    assert two.sum() == 2 * 3600 - 400  # the overlap once, no cancelling


def test_rasterize_box_offset_and_any_angle():
    disc = Point(1000.0, 2000.0).buffer(150.0, quad_segs=64)
    mask = rasterize([disc], (800, 1800, 400, 400), (200, 200))
    assert mask.sum() == pytest.approx(disc.area / 4, rel=0.01)
    ys, xs = np.nonzero(mask)
    assert xs.mean() == pytest.approx(99.5, abs=0.5) and ys.mean() == pytest.approx(99.5, abs=0.5)


def test_annotation_centre_is_inside_even_for_a_crescent():
    rect = box(100, 200, 300, 260)
    x, y = annotation_centre(rect, 0.5)
    assert abs(x - 200) <= 2 and abs(y - 230) <= 2
    ring = Point(500, 500).buffer(200).difference(Point(500, 500).buffer(150))
    crescent = ring.difference(box(500, 0, 1000, 1000))
    x, y = annotation_centre(crescent, 0.5)
    assert crescent.buffer(2).contains(Point(x, y))
    tiny = box(10, 10, 10.5, 10.5)
    x, y = annotation_centre(tiny, 0.5)
    assert tiny.contains(Point(x, y))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rasterize_matches_point_in_polygon_on_every_pixel_centre(seed):
    import shapely

    rng = np.random.default_rng(seed)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radii = rng.uniform(60, 140, 40)
    star = Polygon(np.stack([300 + radii * np.cos(angles), 280 + radii * np.sin(angles)], 1))
    shape_ = star.difference(Point(300, 280).buffer(30)).union(box(420.3, 50.7, 470.1, 90.2))
    box_ = (150.5, 120.25, 330.0, 300.0)
    mask = rasterize([shape_], box_, (97, 113))
    cols = box_[0] + (np.arange(113) + 0.5) * box_[2] / 113
    rows = box_[1] + (np.arange(97) + 0.5) * box_[3] / 97
    xx, yy = np.meshgrid(cols, rows)
    truth = shapely.contains_xy(shape_, xx, yy)
    assert mask.sum() > 1000 and (mask == truth).all()
