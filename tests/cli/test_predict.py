"""``stainadapt predict`` through the real root app."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.models.unet import SegmentationNet
from stainadapt.runs import save_model


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 200, np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(30, 120, (3,), dtype=np.uint8)
    return img


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))
    save_model(tmp_path / "run", net, {"image_size": 64, "threshold": 0.5})
    return tmp_path / "run"


@pytest.fixture
def inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_image(97, 131, 1)).save(src / "a.png")
    Image.fromarray(_image(70, 50, 2)).save(src / "b.jpg", quality=95)
    tifffile.imwrite(src / "c.tif", _image(130, 90, 3), photometric="rgb", tile=(32, 32))
    (src / "notes.txt").write_text("ignored: not an image suffix")
    return src


def _predict(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args), "--device", "cpu"])


def test_folder_png_jpeg_tiff(run, inputs, tmp_path):
    out = tmp_path / "out"
    res = _predict(inputs, "--model", run, "--out", out, "--probabilities", "--overlay")
    assert res.exit_code == 0, res.output
    a = np.asarray(Image.open(out / "a.png"))
    assert a.shape == (97, 131) and set(np.unique(a)) <= {0, 255}
    assert np.asarray(Image.open(out / "b.png")).shape == (70, 50)
    c = tifffile.imread(out / "c.tif")
    assert c.shape == (130, 90) and c.dtype == np.uint8
    assert np.asarray(Image.open(out / "probabilities" / "a.png")).shape == (97, 131)
    assert tifffile.imread(out / "probabilities" / "c.tif").shape == (130, 90)
    assert np.asarray(Image.open(out / "overlays" / "a.png")).shape == (97, 131, 3)
    assert "wrote 3 mask(s)" in res.output
    assert "windows as background" in res.output

    # rerun: everything exists and is kept; --overwrite redoes it
    res = _predict(inputs, "--model", run, "--out", out, "--probabilities")
    assert res.exit_code == 0 and "kept 3 existing" in res.output
    res = _predict(inputs / "a.png", "--model", run, "--out", out, "--overwrite", "--tta")
    assert res.exit_code == 0 and "wrote 1 mask(s)" in res.output


def test_unreadable_files_listed_exit_1(run, inputs, tmp_path):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    res = _predict(inputs, "--model", run, "--out", out, "--tile", "64", "--overlap", "8")
    assert res.exit_code == 1, res.output
    assert "broken.png" in res.output and "1 of 4 inputs" in res.output
    assert (out / "a.png").exists() and (out / "c.tif").exists()


def test_usage_errors(run, inputs, tmp_path):
    res = _predict(inputs, "--model", tmp_path, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no model.safetensors" in res.output
    res = _predict(inputs, "--model", run, "--out", tmp_path / "o", "--tile", "100")
    assert res.exit_code == 2 and "multiple of 32" in res.output
    res = _predict(tmp_path / "missing", "--model", run, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no such file" in res.output
    res = _predict(inputs, "--model", run, "--out", tmp_path / "o", "--normalize", "macenko")
    assert res.exit_code == 2 and "--reference" in res.output


def test_normalize_with_reference(run, inputs, tmp_path):
    Image.fromarray(_image(64, 64, 9)).save(tmp_path / "ref.png")
    out = tmp_path / "out"
    res = _predict(
        inputs / "a.png", "--model", run, "--out", out,
        "--normalize", "reinhard", "--reference", tmp_path / "ref.png",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(out / "a.png")).shape == (97, 131)
