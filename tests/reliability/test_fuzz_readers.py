"""Fuzzing the image and mask readers: random bytes and truncations of real files.

Every outcome must be an image (the right shape and dtype) or the project's own
InputError -- never another exception type, and never a hang.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from stainadapt.data.io import read_image, read_mask
from stainadapt.errors import InputError

FUZZ = settings(
    max_examples=60,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _valid_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    mask = (rng.random((40, 56)) > 0.5).astype(np.uint8) * 255
    out: dict[str, bytes] = {}
    for name, arr, fmt in [("img.png", rgb, "PNG"), ("img.jpg", rgb, "JPEG"),
                           ("mask.png", mask, "PNG")]:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        out[name] = buf.getvalue()
    for name, arr, kw in [("img.tif", rgb, {"compression": "zlib", "tile": (16, 16)}),
                          ("big.tif", rgb, {"bigtiff": True}),
                          ("mask.tif", mask, {})]:
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        out[name] = buf.getvalue()
    return out


VALID = _valid_files()


def _outcome(path: Path) -> None:
    reader = read_mask if path.name.startswith("mask") else read_image
    try:
        arr = reader(path)
    except InputError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(arr, np.ndarray)
    if reader is read_image:
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    else:
        assert arr.dtype == np.bool_ and arr.ndim == 2


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".png", ".jpg", ".tif", ".tiff"]))
def test_random_bytes(data: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img{suffix}"
        path.write_bytes(data)
        _outcome(path)


@FUZZ
@given(name=st.sampled_from(sorted(VALID)), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_truncated_and_corrupted_real_files(name: str, cut: float, flips):
    data = bytearray(VALID[name])
    for where, value in flips:  # overwrite a few bytes: header fields, offsets, payload
        data[int(where * (len(data) - 1))] = value
    data = bytes(data[: int(len(data) * cut)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        _outcome(path)


@pytest.mark.parametrize("name", sorted(VALID))
def test_untouched_files_read(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(VALID[name])
    _outcome(path)
    reader = read_mask if name.startswith("mask") else read_image
    assert reader(path).shape[:2] == (40, 56)
