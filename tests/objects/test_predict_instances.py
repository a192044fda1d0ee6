"""``stainadapt predict --instances`` and the step behind it (objects of written masks)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import torch
from objshapes import disc, rasterise
from PIL import Image
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.data.io import write_image
from stainadapt.errors import InputError
from stainadapt.models.unet import SegmentationNet
from stainadapt.objects import InstanceOptions
from stainadapt.objects.outputs import write_prediction_objects
from stainadapt.runs import save_model


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))
    save_model(tmp_path / "run", net, {"image_size": 64, "threshold": 0.5})
    return tmp_path / "run"


class DarkIsGlomerulus(torch.nn.Module):
    """Per-pixel stand-in model: logit = 20 * (0.55 - mean RGB), dark pixels are glomeruli.

    A 1x1 convolution, so the predicted mask is exactly the dark pixels of the image.
    """

    max_stride = 32

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(-20.0 / 3.0)
            self.conv.bias.fill_(20.0 * 0.55)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


DISCS = [(30, 30, 12), (60, 95, 15), (76, 32, 9)]  # (cy, cx, r): three separate glomeruli


def test_cli_writes_consistent_objects(run, tmp_path, monkeypatch):
    import stainadapt.inference.paths as paths

    monkeypatch.setattr(
        paths, "load_model", lambda run, device="cpu": (DarkIsGlomerulus(), {"threshold": 0.5})
    )
    src = tmp_path / "in"
    src.mkdir()
    shape = (96, 128)
    dark = np.zeros(shape, bool)
    for cy, cx, r in DISCS:
        dark |= disc(shape, cy, cx, r)
    img = np.full((*shape, 3), 200, np.uint8)
    img[dark] = (70, 40, 90)
    Image.fromarray(img).save(src / "a.png")
    tifffile.imwrite(src / "b.tif", img, photometric="rgb", tile=(32, 32))
    out = tmp_path / "out"
    args = ["predict", str(src), "--model", str(run), "--out", str(out), "--device", "cpu"]
    res = CliRunner().invoke(
        app, [*args, "--tile", "64", "--instances", "--min-area", "0", "--keep-holes"]
    )
    assert res.exit_code == 0, res.output
    assert "as GeoJSON + CSV" in res.output
    for name, mask in (
        ("a", np.asarray(Image.open(out / "a.png")) > 0),
        ("b", tifffile.imread(out / "b.tif") > 0),
    ):
        assert (out / "probabilities" / f"{name}{'.png' if name == 'a' else '.tif'}").exists()
        np.testing.assert_array_equal(mask, dark)  # the stand-in's mask: the three discs
        rows = _rows(out / f"{name}.csv")
        feats = json.loads((out / f"{name}.geojson").read_text())["features"]
        assert len(rows) == len(feats) == len(DISCS)
        want = sorted(int(disc(shape, cy, cx, r).sum()) for cy, cx, r in DISCS)
        assert sorted(int(r["area_px2"]) for r in rows) == want
        assert sum(int(r["area_px2"]) for r in rows) == mask.sum()
        assert all(f["geometry"]["type"] == "Polygon" for f in feats)
        union = np.zeros(mask.shape, bool)
        for f in feats:
            union |= rasterise(f["geometry"]["coordinates"], mask.shape)
        # simplified outlines: close to the mask, not equal
        assert (union ^ mask).sum() <= 0.1 * max(1, mask.sum()) + 4 * len(feats)
    summary = _rows(out / "summary.csv")
    assert [r["image"] for r in summary] == ["a", "b"]
    assert [int(r["count"]) for r in summary] == [len(DISCS), len(DISCS)]
    # a rerun keeps what is there
    res = CliRunner().invoke(app, [*args, "--instances"])
    assert res.exit_code == 0 and "kept objects of 2 image(s)" in res.output
    res = CliRunner().invoke(app, [*args, "--instances", "--mpp", "0"])
    assert res.exit_code == 2 and "--mpp" in res.output


def test_objects_of_written_masks_merge_tiles_and_use_microns(tmp_path):
    out = tmp_path / "out"
    (out / "probabilities").mkdir(parents=True)
    src = tmp_path / "in"
    src.mkdir()
    shape = (96, 112)
    # The streamed path writes tiled TIFF masks; this disc straddles four 32 px tiles.
    slide = disc(shape, 64, 64, 22) | disc(shape, 10, 10, 4)
    tifffile.imwrite(out / "slide.tif", slide.astype(np.uint8) * 255, tile=(32, 32))
    prob = np.where(slide, 204, 10).astype(np.uint8)
    tifffile.imwrite(out / "probabilities" / "slide.tif", prob, tile=(32, 32))
    small = disc((40, 40), 20, 20, 9)
    write_image(out / "small.png", small)
    for name in ("slide.tif", "small.png"):
        (src / name).write_bytes(b"")  # inputs are only named here
    opts = InstanceOptions(mpp=0.5, min_area=15.0, simplify=0)  # 15 um2 = 60 px
    report = write_prediction_objects([src], out, opts)
    assert len(report.written) == 2 and report.objects == 2
    (row,) = _rows(out / "slide.csv")  # the r=4 speck (49 px = 12.25 um2) is dropped
    assert float(row["area_um2"]) == pytest.approx(disc(shape, 64, 64, 22).sum() * 0.25)
    assert float(row["mean_probability"]) == pytest.approx(0.8)
    (feat,) = json.loads((out / "slide.geojson").read_text())["features"]
    back = rasterise(feat["geometry"]["coordinates"], shape)
    assert np.array_equal(back, disc(shape, 64, 64, 22))
    summary = {r["image"]: r for r in _rows(out / "summary.csv")}
    assert summary["small"]["count"] == "1"
    assert float(summary["small"]["total_area_um2"]) == pytest.approx(small.sum() * 0.25)
    assert float(summary["small"]["mean_area_um2"]) == pytest.approx(small.sum() * 0.25)
    (src / "summary.png").write_bytes(b"")
    with pytest.raises(InputError, match="summary"):
        write_prediction_objects([src], out, opts)


def test_unreadable_mask_is_listed_and_others_go_on(tmp_path):
    from stainadapt.errors import RunFailure

    out, src = tmp_path / "out", tmp_path / "in"
    out.mkdir()
    src.mkdir()
    write_image(out / "good.png", disc((40, 40), 20, 20, 9))
    (out / "bad.tif").write_bytes(b"II*\x00not a tiff")
    for name in ("good.png", "bad.tif", "lost.png"):
        (src / name).write_bytes(b"")
    report = write_prediction_objects([src], out, InstanceOptions())
    assert [p.name for p in report.written] == ["good.geojson"]
    assert [p.name for p, _ in report.failed] == ["bad.tif"]
    assert [p.name for p in report.missing_masks] == ["lost.png"]
    assert [r["image"] for r in _rows(out / "summary.csv")] == ["good"]
    with pytest.raises(RunFailure, match="bad.tif"):
        report.raise_for_failures()
