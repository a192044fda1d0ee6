"""``stainadapt normalize`` through the real root app: PNG and TIFF round trips."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.testing.normalizers import synthetic_he


@pytest.fixture
def images(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(synthetic_he(64, seed=1)).save(tmp_path / "ref.png")
    Image.fromarray(synthetic_he(48, seed=2)).save(src / "a.png")
    tifffile.imwrite(src / "sub" / "b.tif", synthetic_he(40, seed=3), photometric="rgb")
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(src / "blank.png")
    return tmp_path


@pytest.mark.parametrize("method", ["macenko", "reinhard", "vahadane"])
def test_folder_round_trip_png_and_tiff(images, method):
    out = images / "out"
    res = CliRunner().invoke(
        app,
        [
            "normalize",
            str(images / "in"),
            "--method",
            method,
            "--reference",
            str(images / "ref.png"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    png = np.asarray(Image.open(out / "a.png"))
    assert png.shape == (48, 48, 3) and png.dtype == np.uint8
    assert not np.array_equal(png, synthetic_he(48, seed=2))
    tif = tifffile.imread(out / "sub" / "b.tif")
    assert tif.shape == (40, 40, 3) and tif.dtype == np.uint8
    blank = np.asarray(Image.open(out / "blank.png"))
    assert (blank == 255).all()
    assert "copied unchanged" in res.output


def test_single_file_with_options(images):
    out = images / "o2"
    res = CliRunner().invoke(
        app,
        [
            "normalize",
            str(images / "in" / "sub" / "b.tif"),
            "-m",
            "macenko:alpha=2",
            "-r",
            str(images / "ref.png"),
            "-o",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "b.tif").is_file() and not (out / "a.png").exists()


def test_bad_inputs_are_one_line_errors(images):
    runner = CliRunner()
    res = runner.invoke(
        app, ["normalize", str(images / "nope"), "-r", str(images / "ref.png"), "-o", "x"]
    )
    assert res.exit_code == 2 and "no such file or folder" in res.output
    res = runner.invoke(
        app,
        [
            "normalize",
            str(images / "in"),
            "-m",
            "nosuch",
            "-r",
            str(images / "ref.png"),
            "-o",
            str(images / "o3"),
        ],
    )
    assert res.exit_code == 2 and "unknown normalizers plugin" in res.output
    res = runner.invoke(
        app,
        [
            "normalize",
            str(images / "in"),
            "-r",
            str(images / "in" / "blank.png"),
            "-o",
            str(images / "o4"),
        ],
    )
    assert res.exit_code == 2 and "too little tissue" in res.output


def test_output_over_input_refused(images):
    res = CliRunner().invoke(
        app,
        ["normalize", str(images / "in"), "-r", str(images / "ref.png"), "-o", str(images / "in")],
    )
    assert res.exit_code == 2 and "overwrite an input" in res.output
