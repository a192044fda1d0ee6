"""Decompression bombs: a header claiming an enormous size is refused before decoding.

The files are a few hundred bytes that claim 60000 x 60000 (PNG) or 60000 x 60000 (TIFF)
pixels, more than the default limit of 2**31. The decoders are booby-trapped, so the
tests prove that no pixel buffer was ever asked for, not just that an error came.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.data import io as sio
from stainadapt.data.folders import scan_domain
from stainadapt.errors import InputError

SIDE = 60000  # 3.6e9 pixels > DEFAULT_MAX_PIXELS (2**31)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(path: Path, side: int = SIDE) -> Path:
    """A valid PNG header for side x side RGB, with a tiny (incomplete) IDAT."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
                     + _chunk(b"IEND", b""))
    return path


def tiff_bomb(path: Path, side: int = SIDE) -> Path:
    """A small TIFF whose ImageWidth/ImageLength tags were rewritten to side x side."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8), np.uint8), compression="zlib")
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages[0].tags
        spots = [(tags[name].valueoffset, tags[name].dtype) for name in
                 ("ImageWidth", "ImageLength")]
    for offset, dtype in spots:
        fmt = "<H" if int(dtype) == 3 else "<I"
        data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, side)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to decode pixels fails the test."""

    def trap(*args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(Image.Image, "load", trap)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", trap)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", trap)
    monkeypatch.setenv(sio.MAX_PIXELS_ENV, "")


@pytest.mark.parametrize("make", [png_bomb, tiff_bomb], ids=["png", "tiff"])
def test_bomb_header_refused_before_decoding(tmp_path, make, no_decoding):
    path = make(tmp_path / ("bomb.png" if make is png_bomb else "bomb.tif"))
    assert path.stat().st_size < 2000
    assert sio.image_shape(path) == (SIDE, SIDE)
    for reader in (sio.read_image, sio.read_mask):
        start = time.perf_counter()
        with pytest.raises(InputError) as info:
            reader(path)
        assert time.perf_counter() - start < 2.0
        message = str(info.value)
        assert message.startswith(str(path))
        assert f"{SIDE}x{SIDE}" in message and "refused before decoding" in message
        assert "--max-pixels" in message


def test_bomb_in_a_domain_is_one_line(tmp_path, no_decoding):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    png_bomb(root / "images" / "big.png")
    png_bomb(root / "masks" / "big.png")
    with pytest.raises(InputError) as info:
        scan_domain(root, require_masks=True, verify=True)
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and "big.png" in lines[1] and "more than the limit" in lines[1]


def test_limit_can_be_raised_and_lowered(tmp_path, monkeypatch):
    monkeypatch.setenv(sio.MAX_PIXELS_ENV, "")
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    assert sio.pixel_limit() == sio.DEFAULT_MAX_PIXELS
    sio.set_pixel_limit(1999)
    with pytest.raises(InputError, match="2000 pixels, more than the limit 1999"):
        sio.read_image(path)
    sio.set_pixel_limit(2000)
    assert sio.read_image(path).shape == (40, 50, 3)
    sio.set_pixel_limit(0)  # 0: no limit
    assert sio.pixel_limit() == 0
    sio.set_pixel_limit(None)
    assert sio.pixel_limit() == sio.DEFAULT_MAX_PIXELS
    with pytest.raises(InputError, match="at least 0"):
        sio.set_pixel_limit(-1)


def test_cli_predict_and_evaluate_obey_max_pixels(tmp_path, monkeypatch):
    """The root option reaches every command's readers (here predict and evaluate)."""
    import torch

    from stainadapt.models.unet import SegmentationNet
    from stainadapt.runs import save_model

    monkeypatch.setenv(sio.MAX_PIXELS_ENV, "")
    torch.manual_seed(0)
    save_model(tmp_path / "run", SegmentationNet("resnet18", decoder_channels=(16, 16, 8, 8, 8)),
               {"image_size": 64})
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "in" / "a.png")
    runner = CliRunner()
    res = runner.invoke(app, ["--max-pixels", "100", "predict", str(tmp_path / "in"),
                              "--model", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                              "--device", "cpu"])
    assert res.exit_code == 1 and "a.png" in res.output and "--max-pixels" in res.output
    assert not (tmp_path / "out" / "a.png").exists()
    res = runner.invoke(app, ["--max-pixels", "5000", "predict", str(tmp_path / "in"),
                              "--model", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["--max-pixels", "100", "evaluate", str(tmp_path / "out"),
                              str(tmp_path / "out")])
    assert res.exit_code == 2 and "--max-pixels" in res.output
