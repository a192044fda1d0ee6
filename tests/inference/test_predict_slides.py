"""predict on whole slides: pyramidal mask TIFFs, resolution matching, tissue, failures."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import DiscSizeNet

from stainadapt.data.slides import open_slide
from stainadapt.inference import predict_paths
from stainadapt.inference.slides import plan_slide, read_mask_info
from stainadapt.testing.slides import write_svs

openslide = pytest.importorskip("openslide")

GLASS, TISSUE, NUCLEUS = (242, 242, 242), (225, 160, 195), (90, 40, 120)
REAL_R, DECOY_R = 32, 16  # blob radii on the slide (level-0 pixels, 0.5 um/px)
REAL = [(300, 330), (620, 400), (350, 760), (700, 900)]  # (y, x) centres
DECOYS = [(300, 560), (560, 640), (760, 620)]


def BlobSizeNet() -> DiscSizeNet:  # noqa: N802 - stands for a model class
    """Answers only to dark discs of radius 16-20 px (its "training" size), exactly."""
    return DiscSizeNet(small=8, large=14, guard=10, grow=4)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy + 0.5) ** 2 + (xx - cx + 0.5) ** 2 <= r * r


def _slide_image(h: int = 1024, w: int = 1536) -> np.ndarray:
    """Glass on the right third; tissue with real and decoy nuclei on the rest."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = GLASS
    img[64 : h - 64, 64:1100] = TISSUE
    for cy, cx in REAL:
        img[_disc(h, w, cy, cx, REAL_R)] = NUCLEUS
    for cy, cx in DECOYS:
        img[_disc(h, w, cy, cx, DECOY_R)] = NUCLEUS
    rng = np.random.default_rng(0)
    return np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slide_image() -> np.ndarray:
    return _slide_image()


@pytest.fixture
def stand_in(monkeypatch):
    """predict loads BlobSizeNet; ``meta`` is what model.json would say."""
    meta = {"image_size": 128, "threshold": 0.5, "mpp": 1.0}

    def load(model, device="cpu"):
        return BlobSizeNet(), dict(meta)

    monkeypatch.setattr("stainadapt.inference.paths.load_model", load)
    return meta


def _predict(inputs, out, **kw):
    kw.setdefault("device", "cpu")
    return predict_paths(inputs, "stand-in", out, overlap=32, **kw)


@pytest.mark.parametrize("factors, level", [((4,), 0), ((2, 4), 1)])
def test_slide_read_at_the_model_mpp(tmp_path, slide_image, stand_in, factors, level):
    path = write_svs(tmp_path / "s.svs", slide_image, mpp=0.5, power=20, factors=factors)
    plan = plan_slide(path, model_mpp=1.0)
    try:
        assert plan.downsample == pytest.approx(2.0)
        assert plan.view.level == level and plan.view.shape == (512, 768)
    finally:
        plan.close()
    report = _predict([path], tmp_path / "out")
    assert not report.failed and len(report.slides) == 1
    (_, info), = report.slides
    assert info.level == level and info.downsample == pytest.approx(2.0)
    mask = tifffile.imread(tmp_path / "out" / "s.tif", level=0) > 0
    assert mask.shape == slide_image.shape[:2]
    h, w = mask.shape
    for cy, cx in REAL:  # each real blob found where it is, at its size
        truth = _disc(h, w, cy, cx, REAL_R)
        near = mask & _disc(h, w, cy, cx, REAL_R + 8)
        assert abs(near.sum() - truth.sum()) / truth.sum() < 0.05
        ys, xs = np.nonzero(near)
        assert abs(ys.mean() + 0.5 - cy) < 1.5 and abs(xs.mean() + 0.5 - cx) < 1.5
    for cy, cx in DECOYS:  # blobs of half the size are not the model's
        assert not (mask & _disc(h, w, cy, cx, DECOY_R + 4)).any()


def test_model_without_mpp_reads_level_0(tmp_path, slide_image, stand_in):
    stand_in["mpp"] = None
    path = write_svs(tmp_path / "s.svs", slide_image, mpp=0.5, power=20)
    report = _predict([path], tmp_path / "out")
    (_, info), = report.slides
    assert info.downsample == 1.0 and info.level == 0
    mask = tifffile.imread(tmp_path / "out" / "s.tif") > 0
    h, w = mask.shape
    # read at level 0, the model sees the decoys at its own size, and not the real blobs
    assert all(mask[_disc(h, w, cy, cx, DECOY_R)].mean() > 0.9 for cy, cx in DECOYS)
    assert not any(mask[_disc(h, w, cy, cx, 4)].any() for cy, cx in REAL)


def test_model_trained_coarser_reads_the_slide_coarser(tmp_path, slide_image, monkeypatch):
    """No resolution on the model's side: ``model.downsample`` decides the scale, so the
    real blobs (radius 32) are seen at the stand-in's size and the decoys are not."""
    net = BlobSizeNet()
    net.downsample = 2.0
    monkeypatch.setattr("stainadapt.inference.paths.load_model",
                        lambda model, device="cpu": (net, {"image_size": 128, "mpp": None}))
    path = write_svs(tmp_path / "s.svs", slide_image, mpp=0.5, power=20, factors=(2, 4))
    report = _predict([path], tmp_path / "out")
    (_, info), = report.slides
    assert info.downsample == pytest.approx(2.0) and info.level == 1
    mask = tifffile.imread(tmp_path / "out" / "s.tif", level=0) > 0
    assert mask.shape == slide_image.shape[:2]
    h, w = mask.shape
    assert all(mask[_disc(h, w, cy, cx, REAL_R - 4)].mean() > 0.9 for cy, cx in REAL)
    assert not any((mask & _disc(h, w, cy, cx, DECOY_R + 4)).any() for cy, cx in DECOYS)


def test_slide_without_mpp_warns_once_and_uses_the_flag(tmp_path, slide_image, stand_in):
    path = write_svs(tmp_path / "s.svs", slide_image, mpp=None, power=None)
    report = _predict([path], tmp_path / "a")
    assert len(report.notes) == 1 and "no resolution" in report.notes[0]
    assert report.slides[0][1].downsample == 1.0
    report = _predict([path], tmp_path / "b", mpp=0.5)
    assert not report.notes and report.slides[0][1].downsample == pytest.approx(2.0)
    assert read_mask_info(tmp_path / "b" / "s.tif")["mpp"] == pytest.approx(0.5)


def test_mask_is_a_pyramid_both_libraries_reopen(tmp_path, stand_in):
    image = _slide_image(2048, 2560)
    path = write_svs(tmp_path / "big.svs", image, mpp=0.5, factors=(4, 16))
    report = _predict([path], tmp_path / "out", probabilities=True)
    assert not report.failed
    out = tmp_path / "out" / "big.tif"
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(2048, 2560), (1024, 1280), (512, 640)]
        for lv in levels:
            page = lv.keyframe
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == 8  # zlib / deflate
        page = levels[0].keyframe
        assert page.tags["ResolutionUnit"].value == 3  # centimetre
        num, den = page.tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 0.5, rel=1e-4)
        level0, level1 = levels[0].asarray(), levels[1].asarray()
    assert set(np.unique(level1)) <= {0, 255}
    assert abs((level1 > 0).mean() - (level0 > 0).mean()) < 0.01
    slide = openslide.OpenSlide(str(out))
    try:
        assert slide.level_dimensions == ((2560, 2048), (1280, 1024), (640, 512))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-4)
        region = np.asarray(slide.read_region((0, 0), 0, (2560, 2048)))[..., 0]
        np.testing.assert_array_equal(region, level0)
    finally:
        slide.close()
    with open_slide(tmp_path / "out" / "probabilities" / "big.tif") as probs:
        assert probs.level_count == 3 and probs.mpp == pytest.approx(0.5, rel=1e-4)
    assert (tmp_path / "out" / "thumbnails" / "big.png").exists()


def test_tissue_detection_skips_glass(tmp_path, slide_image, stand_in):
    path = write_svs(tmp_path / "s.svs", slide_image, mpp=0.5)
    plan = plan_slide(path, model_mpp=1.0)
    try:
        tissue = plan.tissue
        assert tissue is not None
        # glass on the right and in the margins; the tissue rectangle is 59% of the slide
        assert 0.57 < tissue.fraction < 0.61
        assert tissue.box_fraction(1200, 100, 1500, 900) == 0.0
        assert tissue.box_fraction(200, 200, 900, 800) == 1.0
        assert plan.reader.tissue_fraction(0, 600, 128) == 0.0  # a window over glass
    finally:
        plan.close()
    report = _predict([path], tmp_path / "out", min_tissue=0.5)
    assert 0 < report.tiles_skipped < report.tiles_total
    info = report.slides[0][1]
    assert info.tissue_mm2 == pytest.approx(info.tissue_fraction * 1536 * 1024 * 0.25e-6)
    report = _predict([path], tmp_path / "all", min_tissue=0)
    assert report.tiles_skipped == 0


def test_corrupt_slide_one_line_and_the_others_run(tmp_path, slide_image, stand_in):
    from typer.testing import CliRunner

    from stainadapt.cli.app import app

    folder = tmp_path / "in"
    folder.mkdir()
    write_svs(folder / "good.svs", slide_image[:512, :768], mpp=1.0)
    (folder / "bad.svs").write_bytes(b"II*\x00" + b"\x01" * 500)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(folder), "-m", "stand-in", "-o", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert (out / "good.tif").exists() and not (out / "bad.tif").exists()
    bad = [line for line in result.output.splitlines() if "bad.svs" in line]
    assert len(bad) == 1 and "cannot read slide" in bad[0]
    good = [line for line in result.output.splitlines() if line.startswith("good.svs:")]
    assert good == [good[0]] and "1 um/px (file), read at level 0" in good[0]
    assert "tissue" in good[0]


def test_instances_use_the_slide_mpp_and_tissue(tmp_path, slide_image, stand_in):
    import csv

    from stainadapt.objects import InstanceOptions
    from stainadapt.objects.outputs import write_prediction_objects

    path = write_svs(tmp_path / "s.svs", slide_image, mpp=0.5)
    _predict([path], tmp_path / "out", probabilities=True)
    report = write_prediction_objects([path], tmp_path / "out", InstanceOptions(mpp=9.0))
    assert report.objects == len(REAL)
    with open(tmp_path / "out" / "summary.csv", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    area = np.pi * REAL_R**2 * 0.25  # um2 at the slide's 0.5 um/px, not --mpp 9
    assert float(row["mean_area_um2"]) == pytest.approx(area, rel=0.05)
    assert float(row["glomeruli_per_mm2"]) == pytest.approx(
        len(REAL) / float(row["tissue_mm2"]), rel=1e-3)


def test_folder_scan_takes_slides_and_an_mrxs_once(tmp_path):
    from stainadapt.inference import collect_inputs, mask_suffix

    folder = tmp_path / "in"
    (folder / "scan").mkdir(parents=True)
    (folder / "scan" / "Slidedat.ini").write_text("[GENERAL]\n")
    (folder / "scan" / "Data0000.dat").write_bytes(b"\0")
    for name in ("scan.mrxs", "a.svs", "b.ndpi", "c.tif", "notes.txt"):
        (folder / name).write_bytes(b"\0")
    names = [p.name for p in collect_inputs([folder])]
    assert names == ["a.svs", "b.ndpi", "c.tif", "scan.mrxs"]
    assert [p.name for p in collect_inputs([folder / "scan"])] == ["scan.mrxs"]
    assert {mask_suffix(p) for p in collect_inputs([folder])} == {".tif"}
