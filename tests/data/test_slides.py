"""The slide reader: OpenSlide and tifffile backends, levels, mpp, regions, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from stainadapt.data.slides import SLIDE_EXTS, mpp_from_power, open_slide
from stainadapt.errors import InputError
from stainadapt.testing.slides import write_pyramidal_tiff, write_svs

pytest.importorskip("openslide")


def _image(h: int = 1024, w: int = 1536) -> np.ndarray:
    """Smooth colour ramps plus noise: every pixel differs from its neighbours."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], axis=-1)
    img = img + rng.integers(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return _image()


@pytest.fixture(scope="module")
def svs(tmp_path_factory, image):
    return write_svs(tmp_path_factory.mktemp("svs") / "slide.svs", image, mpp=0.5, power=20)


def test_svs_opens_with_openslide_as_aperio(svs, image):
    with open_slide(svs) as slide:
        assert slide.backend == "openslide" and slide.vendor == "aperio"
        assert slide.dimensions == (1536, 1024)
        assert slide.level_dimensions == ((1536, 1024), (384, 256))
        assert slide.level_downsamples == pytest.approx((1.0, 4.0))
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "file"
        assert slide.objective_power == pytest.approx(20)
        region = slide.read_region(100, 200, 300, 150)
        assert region.dtype == np.uint8 and region.shape == (150, 300, 3)
        np.testing.assert_array_equal(region, image[200:350, 100:400])


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_associated_images_are_never_levels(svs, backend):
    with open_slide(svs, backend=backend) as slide:
        assert slide.level_count == 2  # the thumbnail, label and macro are not levels
        thumb, _ = slide.thumbnail(256)
        # the label is pure red, the macro pure blue: neither shows up in the slide
        assert not ((thumb[..., 0] == 255) & (thumb[..., 1] == 0)).any()
        assert not ((thumb[..., 2] == 255) & (thumb[..., 0] == 0)).any()


def test_tifffile_backend_reads_the_same_pixels(svs, image):
    with open_slide(svs, backend="tifffile") as a, open_slide(svs, backend="openslide") as b:
        assert a.dimensions == b.dimensions and a.level_dimensions == b.level_dimensions
        assert a.mpp == pytest.approx(0.5) and a.objective_power == pytest.approx(20)
        np.testing.assert_array_equal(a.read_region(64, 32, 500, 300), image[32:332, 64:564])
        np.testing.assert_array_equal(a.read_region(400, 200, 50, 40, level=1),
                                      b.read_region(400, 200, 50, 40, level=1))


@pytest.mark.parametrize("subifds", [False, True])
def test_generic_pyramidal_tiff(tmp_path, image, subifds):
    path = write_pyramidal_tiff(tmp_path / "p.tif", image, mpp=0.25, subifds=subifds)
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.level_dimensions == ((1536, 1024), (768, 512), (384, 256))
        assert slide.level_downsamples == pytest.approx((1, 2, 4))
        assert slide.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(slide.read_region(10, 20, 30, 40), image[20:60, 10:40])
        assert slide.best_level(1.5) == 0 and slide.best_level(2) == 1
        assert slide.best_level(3.9) == 1 and slide.best_level(100) == 2


def test_outside_the_slide_is_white(svs, image):
    with open_slide(svs) as slide:
        region = slide.read_region(1500, 1000, 100, 50)
        np.testing.assert_array_equal(region[:24, :36], image[1000:, 1500:])
        assert (region[24:] == 255).all() and (region[:, 36:] == 255).all()


def test_mpp_from_objective_power_only(tmp_path, image):
    path = write_svs(tmp_path / "p.svs", image[:512, :512], mpp=None, power=40)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "objective power"
    assert mpp_from_power(20) == pytest.approx(0.5)


def test_no_mpp_then_the_fallback(tmp_path, image):
    path = write_pyramidal_tiff(tmp_path / "p.tif", image[:512, :512])
    with open_slide(path) as slide:
        assert slide.mpp is None
        with pytest.raises(InputError, match="no resolution"):
            slide.read_at(0, 0, 10, 10, mpp=1.0)
    with open_slide(path, fallback_mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "given"


def test_read_at_reads_the_best_level_and_resizes(svs, image):
    with open_slide(svs) as slide:
        # 1.0 um/px from a 0.5 um/px slide: downsample 2, read from level 0
        view = slide.view(slide.downsample_for(1.0))
        assert view.level == 0 and view.shape == (512, 768)
        out = slide.read_at(0, 0, 1536, 1024, mpp=1.0)
        assert out.shape == (512, 768, 3)
        reference = image.reshape(512, 2, 768, 2, 3).astype(float).mean(axis=(1, 3))
        assert np.abs(out.astype(float) - reference)[2:-2, 2:-2].mean() < 1.5
        # 2.0 um/px is exactly level 1 (downsample 4): no resizing at all
        view = slide.view(slide.downsample_for(2.0))
        assert view.level == 1 and view.exact
        with open_slide(svs) as again:
            np.testing.assert_array_equal(slide.read_at(400, 200, 200, 100, mpp=2.0),
                                          again.read_region(400, 200, 50, 25, level=1))


def test_view_bands_join_without_a_seam(svs):
    with open_slide(svs) as slide:
        view = slide.view(1.3)
        whole = view.read_box(0, 0, view.shape[1], view.shape[0])
        bands = np.concatenate([view.read_rows(y, y + 97) for y in range(0, view.shape[0], 97)])
        # the same pixels up to Pillow's fixed-point rounding
        assert np.abs(whole.astype(int) - bands.astype(int)).max() <= 1


def test_png_is_a_one_level_slide(tmp_path, image):
    from stainadapt.data.io import write_image

    path = write_image(tmp_path / "a.png", image[:64, :80])
    with open_slide(path) as slide:
        assert slide.backend == "image" and slide.dimensions == (80, 64)
        assert slide.level_count == 1 and slide.mpp is None
        np.testing.assert_array_equal(slide.read_region(0, 0, 80, 64), image[:64, :80])


@pytest.mark.parametrize("name", ["bad.svs", "bad.ndpi", "bad.tif"])
def test_corrupt_slide_is_one_input_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"II*\x00" + b"\x07" * 300)
    with pytest.raises(InputError) as err:
        open_slide(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message and "cannot read" in message


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unsupported extension"):
        open_slide(tmp_path / "a.xyz")
    with pytest.raises(InputError, match="no such file"):
        open_slide(tmp_path / "a.svs")
    assert ".mrxs" in SLIDE_EXTS


def test_ome_tiff_resolution_and_a_72_dpi_tag_is_ignored(tmp_path, image):
    import tifffile

    ome = tmp_path / "o.ome.tif"
    tifffile.imwrite(ome, image[:256, :256], photometric="rgb", tile=(128, 128),
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.44, "PhysicalSizeY": 0.44})
    with open_slide(ome) as slide:
        assert slide.mpp == pytest.approx(0.44)
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(dpi, image[:64, :64], photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH")
    with open_slide(dpi) as slide:
        assert slide.mpp is None


def test_tissue_mask_finds_stain_not_glass():
    from stainadapt.data.tissue import TissueMap, tissue_mask

    rng = np.random.default_rng(0)
    thumb = np.clip(rng.normal(238, 4, (200, 300, 3)), 0, 255).astype(np.uint8)  # glass
    assert not tissue_mask(thumb).any()  # bare glass: its noise is not split in two
    thumb[40:160, 30:150] = (210, 120, 170)  # a stained section...
    thumb[90:95, 80:85] = 238  # ...with a small hole (filled)
    thumb[10:13, 250:253] = (120, 40, 90)  # a speck of 9 px (removed)
    thumb[150:190, 200:280] = 70  # a dark unstained object (kept: darker than glass)
    mask = tissue_mask(thumb)
    assert mask[41:159, 31:149].all() and not mask[10:13, 250:253].any()
    assert mask[151:189, 201:279].all()
    # the 3x3 median rounds off the corners of each rectangle (one pixel each)
    assert 120 * 120 + 40 * 80 - 8 <= mask.sum() <= 120 * 120 + 40 * 80
    tmap = TissueMap(mask, downsample=4.0)
    assert tmap.box_fraction(140, 180, 580, 620) == 1.0  # level-0 box inside the section
    assert tmap.box_fraction(0, 0, 100, 100) == 0.0
    assert tmap.box_fraction(100, 100, 101, 101) == 0.0  # smaller than a mask pixel
    assert tmap.area_mm2(0.5) == pytest.approx(mask.sum() * (4 * 0.5e-3) ** 2)


def test_a_section_filling_the_thumbnail_keeps_its_pale_stain():
    from stainadapt.data.tissue import tissue_mask

    rng = np.random.default_rng(0)
    thumb = np.empty((200, 200, 3), np.float32)
    thumb[:] = (242, 242, 240)  # a rim of glass
    thumb[10:190, 10:190] = (215, 150, 185)  # pale pink over most of the picture
    thumb[60:120, 60:120] = (90, 30, 110)  # a dark purple structure
    thumb += rng.normal(0, 4, (200, 200, 1))
    mask = tissue_mask(thumb.clip(0, 255).astype(np.uint8))
    assert mask[11:189, 11:189].all() and not mask[:8].any() and not mask[:, :8].any()


def test_bounds_are_the_scanned_area_else_the_full_slide(svs, tmp_path, image, monkeypatch):
    from types import SimpleNamespace

    from stainadapt.data.tiles import slide_origin

    h, w = image.shape[:2]
    with open_slide(svs) as slide:  # an SVS records no scanned-area bounds
        assert slide.bounds == (0, 0, w, h) and slide_origin(slide) == (0, 0)
        real = slide._osr
        props = dict(real.properties)
        # OpenSlide's properties of an MRXS whose scanned area starts at (100, 60).
        props.update({"openslide.bounds-x": "100", "openslide.bounds-y": "60",
                      "openslide.bounds-width": "800", "openslide.bounds-height": "500"})
        monkeypatch.setattr(slide, "_osr", SimpleNamespace(properties=props, close=real.close))
        assert slide.bounds == (100, 60, 800, 500) and slide_origin(slide) == (100, 60)
        del props["openslide.bounds-width"], props["openslide.bounds-height"]
        assert slide.bounds == (100, 60, w - 100, h - 60)
    for backend in ("tifffile",):
        with open_slide(svs, backend=backend) as slide:
            assert slide.bounds == (0, 0, w, h)
    png = tmp_path / "small.png"
    from stainadapt.data.io import write_image

    write_image(png, image[:64, :96])
    with open_slide(png) as slide:
        assert slide.bounds == (0, 0, 96, 64)


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_svs_drawn_tile_by_tile_matches_the_array_form(tmp_path, image, backend):
    from stainadapt.testing.slides import _reduce

    levels = {f: _reduce(image, f) for f in (1, 4)}

    def pixels(x: int, y: int, w: int, h: int, f: int) -> np.ndarray:
        src = levels[f] if f in levels else _reduce(image, f)
        out = np.zeros((h, w, 3), np.uint8)
        part = src[y : y + h, x : x + w]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    drawn = write_svs(tmp_path / "drawn.svs", pixels, mpp=0.5, power=20,
                      shape=image.shape[:2])
    with open_slide(drawn, backend=backend) as a, open_slide(_array_svs(tmp_path, image)) as b:
        assert a.level_dimensions == b.level_dimensions and a.mpp == pytest.approx(0.5)
        for level in range(a.level_count):
            w, h = a.level_dimensions[level]
            np.testing.assert_array_equal(a.read_region(0, 0, w, h, level),
                                          b.read_region(0, 0, w, h, level))


def _array_svs(folder, image):
    return write_svs(folder / "array.svs", image, mpp=0.5, power=20)
