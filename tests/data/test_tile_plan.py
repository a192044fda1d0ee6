"""Tile planning and slide/annotation pairing (``stainadapt.data.tile_plan``, ``.tiles``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("shapely")

from shapely.geometry import box  # noqa: E402

from stainadapt.data.annotations import AnnotationSet  # noqa: E402
from stainadapt.data.tile_plan import TileOptions, plan_tiles  # noqa: E402
from stainadapt.data.tiles import pair_annotations  # noqa: E402
from stainadapt.data.tissue import TissueMap  # noqa: E402
from stainadapt.errors import InputError  # noqa: E402


def test_pairing_by_name_full_name_and_order():
    slides = [Path("s/a.svs"), Path("s/b.ndpi")]
    pairs = pair_annotations(slides, [Path("g/b.ndpi.geojson"), Path("g/a.geojson")])
    assert pairs == [(slides[0], Path("g/a.geojson")), (slides[1], Path("g/b.ndpi.geojson"))]
    pairs = pair_annotations(slides, [Path("x.json"), Path("y.json")])  # no name matches
    assert pairs == [(slides[0], Path("x.json")), (slides[1], Path("y.json"))]
    assert pair_annotations(slides, None) == [(slides[0], None), (slides[1], None)]


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (["a.geojson"], "s/b.ndpi: no annotation file"),
        (["a.geojson", "b.geojson", "c.geojson"], "c.geojson: annotation file of no slide"),
        (["a.geojson", "g/a.json"], "same name as a.geojson"),
        (["x.geojson"], "s/a.svs: no annotation file"),
    ],
)
def test_pairing_problems_name_the_file(annotations, message):
    with pytest.raises(InputError, match=message):
        pair_annotations([Path("s/a.svs"), Path("s/b.ndpi")], [Path(a) for a in annotations])


def _annotations(glomeruli, regions=()):
    return AnnotationSet(Path("a.geojson"), tuple(glomeruli), tuple(regions))


def test_glomerulus_tiles_are_centred_and_kept_inside_the_slide():
    anns = _annotations([box(500, 500, 600, 560), box(10, 20, 60, 80)])
    tiles, notes = plan_tiles(anns, (2000, 1000), 256.0, TileOptions(size=128, negatives=0),
                              np.random.default_rng(0))
    # Centres within one tile pixel (2 level-0 pixels) of the centroid (550, 530).
    (a, b) = tiles
    assert abs(a.x - 422) <= 2 and abs(a.y - 402) <= 2 and (b.x, b.y) == (0, 0)
    assert {t.kind for t in tiles} == {"glomerulus"} and a.side == 256.0
    assert notes == []


def test_random_tiles_need_a_region_and_tissue():
    rng = np.random.default_rng(0)
    opts = TileOptions(size=64, negatives=2.0)
    anns = _annotations([box(100, 100, 150, 150)])
    tiles, notes = plan_tiles(anns, (1000, 1000), 128.0, opts, rng)
    assert len(tiles) == 1 and "no random tiles" in notes[0]
    roi = box(400, 400, 900, 900)
    tissue = np.zeros((100, 100), bool)
    tissue[:, 50:] = True  # tissue on the right half only (x >= 500)
    anns = _annotations([box(100, 100, 150, 150)], [roi])
    tiles, notes = plan_tiles(anns, (1000, 1000), 128.0, opts, rng, TissueMap(tissue, 10.0))
    randoms = [t for t in tiles if t.kind == "random"]
    assert len(randoms) == 2 and notes == []
    for t in randoms:
        assert roi.contains(box(t.x, t.y, t.x + 128, t.y + 128)) and t.x + 64 >= 500
    # A region too small for a tile gives fewer, with a note.
    anns = _annotations([box(100, 100, 150, 150)], [box(0, 0, 100, 100)])
    tiles, notes = plan_tiles(anns, (1000, 1000), 128.0, opts, rng)
    assert len(tiles) == 1 and "0 of 2 random tiles" in notes[0]


def test_a_slide_smaller_than_a_tile_is_refused():
    with pytest.raises(InputError, match="smaller than one tile"):
        plan_tiles(None, (100, 1000), 128.0, TileOptions(size=64), np.random.default_rng(0))
