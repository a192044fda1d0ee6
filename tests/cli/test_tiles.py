"""``stainadapt tiles``: slides + QuPath GeoJSON -> a domain folder that train reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("openslide")
pytest.importorskip("shapely")

from shapely.geometry import Polygon, box, shape  # noqa: E402

from stainadapt.cli.app import app  # noqa: E402
from stainadapt.data.annotations import rasterize  # noqa: E402
from stainadapt.data.folders import scan_domain  # noqa: E402
from stainadapt.testing.slides import write_pyramidal_tiff, write_svs  # noqa: E402

GLASS, TISSUE, GLOM = (242, 242, 240), (215, 150, 185), (90, 30, 110)
#: Analytic glomeruli, level-0 pixels of a 1024 x 1024 slide at 0.25 um/px.
RECT = box(130, 140, 330, 300)
HOLED = Polygon([(560, 520), (860, 520), (860, 820), (560, 820)],
                [[(660, 620), (760, 620), (760, 720), (660, 720)]])
DIAMOND = Polygon([(300, 620), (420, 740), (300, 860), (180, 740)])
GLOMERULI = [RECT, HOLED, DIAMOND]
ROI = box(560, 40, 1000, 480)  # holds no glomerulus


def feature(geom, cls):
    return {"type": "Feature", "geometry": json.loads(json.dumps(geom.__geo_interface__)),
            "properties": {"objectType": "annotation", "classification": {"name": cls}}}


def slide_image(size: int = 1024) -> np.ndarray:
    """Pink tissue on glass with the glomeruli drawn dark, pixel-exact like their masks."""
    rng = np.random.default_rng(0)
    img = np.empty((size, size, 3), np.float32)
    img[:] = GLASS
    img[24:1000, 24:1000] = TISSUE
    glom = rasterize(GLOMERULI, (0, 0, size, size), (size, size))
    img[glom] = GLOM
    img += rng.normal(0, 4, (size, size, 1))
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    image = slide_image()
    write_svs(root / "case1.svs", image, mpp=0.25, power=40, factors=(4,), associated=False)
    write_svs(root / "case2.svs", image, mpp=0.25, power=40, factors=(4,), associated=False)
    (root / "case1.geojson").write_text(json.dumps({
        "type": "FeatureCollection",
        "features": [feature(g, "Glomerulus") for g in GLOMERULI] + [feature(ROI, "Region*")],
    }))
    # QuPath's other export: a bare list of features; named after the slide's full name.
    (root / "case2.svs.geojson").write_text(json.dumps([feature(RECT, "Glomerulus")]))
    return root


def run(*args):
    return CliRunner().invoke(app, ["tiles", *map(str, args)])


def record(out):
    return json.loads((out / "tiles.json").read_text())


def test_masks_reproduce_the_polygons_through_resampling(slides, tmp_path):
    out = tmp_path / "pasm"
    res = run(slides / "case1.svs", "-a", slides / "case1.geojson", "--out", out,
              "--mpp", "0.5", "--size", "256", "--negatives", "0")
    assert res.exit_code == 0, res.output
    assert "wrote 3 tile(s) (3 glomerulus)" in res.output
    rec = record(out)
    assert rec["mpp"] == 0.5 and rec["size"] == 256 and len(rec["tiles"]) == 3
    samples = scan_domain(out, require_masks=True, verify=True)
    assert len(samples) == 3
    for tile in rec["tiles"]:
        x, y, w, h = tile["box"]
        assert (w, h) == (512, 512) and tile["slide_mpp"] == 0.25
        assert tile["kind"] == "glomerulus"
        tile_box = box(x, y, x + w, y + h)
        glom = next(g for g in GLOMERULI if tile_box.contains(g.centroid))
        mask = np.asarray(Image.open(out / "masks" / f"{tile['name']}.png"))
        image = np.asarray(Image.open(out / "images" / f"{tile['name']}.png"))
        assert mask.shape == (256, 256) and image.shape == (256, 256, 3)
        assert set(np.unique(mask)) <= {0, 255}
        fg = mask > 0
        # Every annotated polygon in the tile, at a quarter of its level-0 area.
        expected = sum(g.intersection(tile_box).area for g in GLOMERULI) / 4
        assert fg.sum() == pytest.approx(expected, rel=0.03)
        # The tile centres on its glomerulus (shifted inside the slide at its border;
        # the holed square's centroid is in its hole: a pixel of the ring instead).
        if glom is not HOLED:
            cx, cy = glom.centroid.x, glom.centroid.y
            assert abs(x - min(max(cx - 256, 0), 512)) <= 2
            assert abs(y - min(max(cy - 256, 0), 512)) <= 2
        # Image and mask line up.
        dark = image.mean(axis=2) < 120
        assert (dark == fg).mean() > 0.98
        if glom is HOLED:  # the hole (level-0 660..760) is background
            hx, hy = (710 - x) / 2, (670 - y) / 2
            assert not fg[int(hy), int(hx)] and not dark[int(hy), int(hx)]


def test_random_tiles_come_only_from_the_region_of_interest(slides, tmp_path):
    out = tmp_path / "pasm"
    res = run(slides / "case1.svs", "-a", slides / "case1.geojson", "--out", out,
              "--mpp", "0.5", "--size", "64", "--negatives", "3", "--seed", "3")
    assert res.exit_code == 0, res.output
    tiles = record(out)["tiles"]
    randoms = [t for t in tiles if t["kind"] == "random"]
    assert len(randoms) == 9
    for t in randoms:
        x, y, w, h = t["box"]
        assert ROI.contains(box(x, y, x + w, y + h))
        assert t["foreground"] == 0.0
    # The same seed gives the same tiles; another seed other ones.
    again = tmp_path / "again"
    run(slides / "case1.svs", "-a", slides / "case1.geojson", "--out", again,
        "--mpp", "0.5", "--size", "64", "--negatives", "3", "--seed", "3")
    assert record(again)["tiles"] == tiles


def test_fully_annotated_slides_give_random_tissue_tiles_anywhere(slides, tmp_path):
    out = tmp_path / "pasm"
    res = run(slides / "case2.svs", "-a", slides / "case2.svs.geojson", "--out", out,
              "--size", "64", "--negatives", "6", "--fully-annotated", "--roi-class", "")
    assert res.exit_code == 0, res.output
    randoms = [t for t in record(out)["tiles"] if t["kind"] == "random"]
    assert len(randoms) == 6
    for t in randoms:  # on tissue (the slide's 24..1000 square), not on glass
        x, y, w, h = t["box"]
        assert box(24, 24, 1000, 1000).intersection(box(x, y, x + w, y + h)).area >= 0.5 * w * h
    # Without a region or --fully-annotated, no random tiles and a note saying why.
    res = run(slides / "case2.svs", "-a", slides / "case2.svs.geojson", "--out",
              tmp_path / "b", "--size", "64", "--negatives", "6")
    assert res.exit_code == 0 and "no random tiles" in res.output


def test_a_bad_geojson_fails_its_slide_only(slides, tmp_path):
    bad = tmp_path / "ann"
    bad.mkdir()
    (bad / "case1.geojson").write_text((slides / "case1.geojson").read_text())
    (bad / "case2.geojson").write_text("<html>not geojson</html>")
    out = tmp_path / "pasm"
    res = run(slides / "case1.svs", slides / "case2.svs", "-a", bad, "--out", out,
              "--size", "64", "--negatives", "0")
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if "case2.geojson" in ln]
    assert len(lines) == 1 and "not GeoJSON" in lines[0]
    assert "1 of 2 slides could not be tiled" in res.output
    assert len(list((out / "images").glob("case1_*.png"))) == 3
    assert not list((out / "images").glob("case2_*"))


def test_unlabelled_slides_give_image_only_tiles(slides, tmp_path):
    out = tmp_path / "masson"
    res = run(slides / "case1.svs", "--out", out, "--size", "64", "--tiles-per-slide", "5")
    assert res.exit_code == 0, res.output
    assert not (out / "masks").exists()
    assert len(scan_domain(out, require_masks=False, verify=True)) == 5
    assert {t["kind"] for t in record(out)["tiles"]} == {"unlabelled"}
    # An unlabelled run into a labelled folder would mix them: refused.
    lab = tmp_path / "pasm"
    run(slides / "case2.svs", "-a", slides / "case2.svs.geojson", "--out", lab, "--size", "64")
    res = run(slides / "case1.svs", "--out", lab, "--size", "64")
    assert res.exit_code == 2 and "labelled tiles" in res.output


def test_rerun_keeps_existing_tiles_and_refuses_another_resolution(slides, tmp_path):
    out = tmp_path / "pasm"
    args = [slides / "case2.svs", "-a", slides / "case2.svs.geojson", "--out", out,
            "--size", "64"]
    assert run(*args).exit_code == 0
    (name,) = [p.name for p in (out / "images").iterdir()]
    stamp = (out / "images" / name).stat().st_mtime_ns
    res = run(*args)
    assert res.exit_code == 0 and "kept 1 existing tile(s)" in res.output
    assert (out / "images" / name).stat().st_mtime_ns == stamp
    res = run(*args, "--overwrite")
    assert res.exit_code == 0 and "wrote 1 tile(s)" in res.output
    res = run(*args, "--mpp", "1.0")
    assert res.exit_code == 2 and "mpp 0.5" in res.output


def test_slide_without_resolution_needs_slide_mpp(tmp_path):
    image = slide_image()
    write_pyramidal_tiff(tmp_path / "plain.tif", image, mpp=None)
    res = run(tmp_path / "plain.tif", "--out", tmp_path / "t", "--size", "64",
              "--tiles-per-slide", "2")
    assert res.exit_code == 1 and "plain.tif: the slide records no resolution" in res.output
    assert "--slide-mpp" in res.output
    res = run(tmp_path / "plain.tif", "--out", tmp_path / "t", "--size", "64",
              "--tiles-per-slide", "2", "--slide-mpp", "0.25")
    assert res.exit_code == 0, res.output
    assert record(tmp_path / "t")["tiles"][0]["box"][2] == 128


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mpp", "0"], "--mpp 0.0: must be above 0"),
        (["--size", "8"], "--size 8: must be at least 16"),
        (["--negatives", "-1"], "--negatives -1.0"),
        (["--min-tissue", "2"], "--min-tissue 2.0"),
    ],
)
def test_bad_options_exit_2(slides, tmp_path, args, message):
    res = run(slides / "case1.svs", "--out", tmp_path / "o", *args)
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "o").exists()


def test_unpaired_annotation_file_exits_2_before_writing(slides, tmp_path):
    res = run(slides / "case1.svs", slides / "case2.svs", "-a", slides / "case1.geojson",
              "--out", tmp_path / "o")
    assert res.exit_code == 2 and "case2.svs: no annotation file" in res.output
    assert not (tmp_path / "o").exists()


def test_geojson_round_trip_of_the_fixture(slides):
    data = json.loads((slides / "case1.geojson").read_text())
    assert shape(data["features"][1]["geometry"]).equals(HOLED)


def test_bounds_origin_moves_qupath_coordinates(slides, tmp_path, monkeypatch):
    from shapely.affinity import translate

    import stainadapt.data.tiles as tiles_mod
    from stainadapt.data.slides import open_slide

    with open_slide(slides / "case1.svs") as slide:  # an SVS has no scanned-area bounds
        assert tiles_mod.slide_origin(slide) == (0, 0)
    # QuPath's coordinates of a slide whose scanned area starts at (100, 60).
    moved = translate(RECT, -100, -60)
    (tmp_path / "case1.geojson").write_text(json.dumps([feature(moved, "Glomerulus")]))
    monkeypatch.setattr(tiles_mod, "slide_origin", lambda slide: (100, 60))
    args = [slides / "case1.svs", "-a", tmp_path / "case1.geojson", "--size", "128",
            "--negatives", "0"]
    assert run(*args, "--out", tmp_path / "a").exit_code == 0
    (tile,) = record(tmp_path / "a")["tiles"]
    assert tile["annotation_origin"] == [100, 60]
    x, y, w, h = tile["box"]
    assert box(x, y, x + w, y + h).contains(RECT)
    mask = np.asarray(Image.open(tmp_path / "a" / "masks" / f"{tile['name']}.png"))
    assert (mask > 0).sum() == RECT.area / 4
    assert run(*args, "--out", tmp_path / "b", "--no-bounds-origin").exit_code == 0
    (tile,) = record(tmp_path / "b")["tiles"]
    assert tile["annotation_origin"] == [0, 0]
    assert box(*tile["box"][:2], tile["box"][0] + 256, tile["box"][1] + 256).contains(moved)


def test_train_takes_the_tiles_resolution(slides, tmp_path):
    src, tgt, other = tmp_path / "pas", tmp_path / "masson", tmp_path / "coarse"
    assert run(slides / "case1.svs", "-a", slides / "case1.geojson", "--out", src, "--mpp",
               "0.5", "--size", "64", "--fully-annotated", "--negatives", "1").exit_code == 0
    assert run(slides / "case2.svs", "--out", tgt, "--mpp", "0.5", "--size", "64",
               "--tiles-per-slide", "4").exit_code == 0
    assert run(slides / "case2.svs", "--out", other, "--mpp", "1", "--size", "64",
               "--tiles-per-slide", "2").exit_code == 0
    base = ["train", "--mode", "source-only", "--backbone", "resnet18", "--image-size", "64",
            "--batch-size", "2", "--steps-per-epoch", "1", "--pretrain-epochs", "1",
            "--adv-epochs", "0", "--samples", "0", "--device", "cpu", "--source", str(src)]
    res = CliRunner().invoke(app, [*base, "--target", str(tgt), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "r" / "model.json").read_text())
    assert meta["mpp"] == 0.5 * meta["downsample"]  # the resolution G works at
    # Two resolutions, or an --mpp the tiles contradict: one line, exit 2, nothing written.
    for extra, needle in (
        (["--target", str(other)], f"{other / 'tiles.json'}: target tiles at 1 um/px"),
        (["--mpp", "0.25"], f"{src / 'tiles.json'}: tiles at 0.5 um/px, not --mpp 0.25"),
    ):
        res = CliRunner().invoke(app, [*base, *extra, "--out", str(tmp_path / "x")])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.output
        assert not (tmp_path / "x" / "model.json").exists()
