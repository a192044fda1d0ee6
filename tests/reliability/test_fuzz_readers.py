"""Fuzzing the image and mask readers: random bytes and truncations of real files.

Every outcome must be an image (the right shape and dtype) or the project's own
InputError -- never another exception type, and never a hang (a watchdog alarm turns a
read that takes more than HANG_SECONDS into a failure).

CI (``.ci/run``: plain ``pytest``) runs a bounded number of examples per test,
``STAINADAPT_FUZZ_EXAMPLES`` (default 60); raise it for a longer local fuzzing session.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from stainadapt.data.io import check_intact, image_shape, read_image, read_mask
from stainadapt.errors import InputError

HANG_SECONDS = 20
FUZZ = settings(
    max_examples=int(os.environ.get("STAINADAPT_FUZZ_EXAMPLES", "60")),
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


@contextlib.contextmanager
def _watchdog(path: Path):
    """Fail instead of hanging (SIGALRM; main thread on POSIX only, else no guard)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def hung(signum, frame):
        raise AssertionError(f"{path}: reader still busy after {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _outcome(path: Path) -> None:
    for header_check in (image_shape, check_intact):  # the folder scan's cheap checks
        try:
            with _watchdog(path):
                header_check(path)
        except InputError as exc:
            assert str(path) in str(exc)
    reader = read_mask if path.name.startswith("mask") else read_image
    try:
        with _watchdog(path):
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
# a flipped strip offset: tifffile returned shape (0, 40, 56) for axes "YX"
@example(name="mask.tif", cut=1.0, flips=[(0.017578125, 1)])
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
