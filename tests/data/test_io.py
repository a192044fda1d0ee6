"""Readers and writers on every supported format, and every failure mode."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from stainadapt.data.io import (
    check_intact,
    image_shape,
    read_image,
    read_mask,
    to_rgb8,
    write_image,
)
from stainadapt.errors import InputError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_write_read_roundtrip(tmp_path, suffix):
    path = write_image(tmp_path / f"a{suffix}", RGB)
    assert np.array_equal(read_image(path), RGB)
    assert image_shape(path) == (48, 64)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_jpeg(tmp_path):
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.dstack([xx * 3, yy * 4, 100 + 0 * xx]).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).mean() < 3


def test_png_rgba_grey_16bit(tmp_path):
    rgba = np.dstack([RGB, np.full((48, 64), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), RGB)
    Image.fromarray(RGB[:, :, 0]).save(tmp_path / "grey.png")
    grey = read_image(tmp_path / "grey.png")
    assert np.array_equal(grey, np.repeat(RGB[:, :, :1], 3, axis=2))
    Image.fromarray(RGB[:, :, 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert np.array_equal(read_image(tmp_path / "g16.png")[:, :, 1], RGB[:, :, 0])


def test_tiff_variants(tmp_path):
    # 16-bit RGB
    tifffile.imwrite(tmp_path / "16.tif", RGB.astype(np.uint16) * 257, photometric="rgb")
    assert np.array_equal(read_image(tmp_path / "16.tif"), RGB)
    # tiled, compressed BigTIFF
    tifffile.imwrite(
        tmp_path / "big.tif",
        RGB,
        bigtiff=True,
        tile=(16, 16),
        photometric="rgb",
        compression="zlib",
    )
    assert np.array_equal(read_image(tmp_path / "big.tif"), RGB)
    assert image_shape(tmp_path / "big.tif") == (48, 64)
    # RGBA
    rgba = np.dstack([RGB, np.zeros((48, 64), np.uint8)])
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert np.array_equal(read_image(tmp_path / "rgba.tif"), RGB)
    # grey and planar (channels first)
    tifffile.imwrite(tmp_path / "grey.tif", RGB[:, :, 1])
    assert np.array_equal(read_image(tmp_path / "grey.tif")[:, :, 2], RGB[:, :, 1])
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(RGB, 2, 0), photometric="rgb", planarconfig="separate"
    )
    assert np.array_equal(read_image(tmp_path / "planar.tif"), RGB)


def test_pyramid_reads_level0(tmp_path):
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(RGB, tile=(16, 16), photometric="rgb", subifds=1)
        tw.write(RGB[::2, ::2], tile=(16, 16), photometric="rgb", subfiletype=1)
    assert np.array_equal(read_image(path), RGB)
    assert image_shape(path) == (48, 64)


def test_conversion_rule():
    assert to_rgb8(np.array([[0.0, 1.0]])).tolist() == [[[0] * 3, [255] * 3]]
    assert to_rgb8(np.array([[65535, 256]], np.uint16))[0, :, 0].tolist() == [255, 1]
    assert to_rgb8(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("zero.png", b"", "empty file"),
        ("text.png", b"not an image at all", "cannot read"),
        ("text.tif", b"not a tiff at all", "cannot read"),
        ("a.bmp", b"BM....", "unsupported extension"),
    ],
)
def test_bad_files(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=reason) as info:
        read_image(path)
    assert str(info.value).startswith(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.png")


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_truncated(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".jpg":
        Image.fromarray(RGB).save(full)
    else:
        write_image(full, RGB)
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3] if suffix != ".tif" else data[:-200])
    check_intact(full)
    with pytest.raises(InputError, match=str(cut)):
        check_intact(cut)
    if suffix != ".jpg":  # Pillow may decode a cut JPEG with grey padding
        with pytest.raises(InputError, match=str(cut)):
            read_image(cut)


def test_max_pixels(tmp_path):
    path = write_image(tmp_path / "a.png", RGB)
    with pytest.raises(InputError, match="--max-pixels"):
        read_image(path, max_pixels=100)
    tif = write_image(tmp_path / "a.tif", RGB)
    with pytest.raises(InputError, match="--max-pixels"):
        read_image(tif, max_pixels=100)


@pytest.mark.parametrize("high", [1, 255])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_masks(tmp_path, high, suffix):
    m = np.zeros((16, 20), np.uint8)
    m[4:9, 3:12] = high
    path = write_image(tmp_path / f"m{suffix}", m)
    out = read_mask(path)
    assert out.dtype == np.bool_ and np.array_equal(out, m > 0)


def test_mask_rgb_and_values(tmp_path):
    m = np.zeros((16, 20, 3), np.uint8)
    m[2:5, 2:5, 0] = 255
    assert read_mask(write_image(tmp_path / "rgb.png", m)).sum() == 9
    many = np.arange(16 * 20, dtype=np.uint8).reshape(16, 20) % 4
    path = write_image(tmp_path / "many.png", many)
    with pytest.raises(InputError, match="--mask-threshold"):
        read_mask(path)
    assert np.array_equal(read_mask(path, threshold=1), many > 1)
    ones = write_image(tmp_path / "ones.png", np.full((4, 4), 3, np.uint8))
    assert read_mask(ones).all()


def test_written_file_mode_follows_umask(tmp_path):
    import os

    old = os.umask(0o022)
    os.umask(old)
    path = write_image(tmp_path / "m.png", np.zeros((4, 4), np.uint8))
    assert path.stat().st_mode & 0o777 == 0o666 & ~old
