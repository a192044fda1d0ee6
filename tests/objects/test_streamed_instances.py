"""End to end: a slide predicted in streamed mode, objects merged across 256 px mask tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from objshapes import disc
from torch import nn

from stainadapt.inference import predict_paths
from stainadapt.objects import InstanceOptions, objects_from_arrays
from stainadapt.objects.outputs import write_prediction_objects


class DarkIsGlomerulus(nn.Module):
    """logit = 20 * (0.55 - local mean intensity): dark discs on light glass are found."""

    max_stride = 32

    def __init__(self) -> None:
        super().__init__()
        # Replicate padding: zero padding would make the image border look dark.
        self.conv = nn.Conv2d(3, 1, 5, padding=2, padding_mode="replicate")
        with torch.no_grad():
            self.conv.weight.fill_(-20.0 / 75.0)
            self.conv.bias.fill_(20.0 * 0.55)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_streamed_slide_objects_cross_mask_tiles(tmp_path, monkeypatch):
    import stainadapt.inference.paths as paths

    monkeypatch.setattr(
        paths, "load_model", lambda run, device="cpu": (DarkIsGlomerulus(), {"threshold": 0.5})
    )
    shape = (320, 560)
    dark = disc(shape, 256, 256, 40)  # on the corner of four 256 px output tiles
    dark |= disc(shape, 80, 120, 30) | disc(shape, 150, 470, 25)
    dark |= disc(shape, 256, 390, 28) | disc(shape, 256, 436, 28)  # a touching pair
    img = np.where(dark[..., None], 60, 225).astype(np.uint8).repeat(3, axis=2)
    tifffile.imwrite(tmp_path / "slide.tif", img, photometric="rgb", tile=(64, 64))
    out = tmp_path / "out"
    report = predict_paths(
        [tmp_path / "slide.tif"], "unused", out, tile=64, device="cpu",
        probabilities=True, stream_min_pixels=0,
    )  # fmt: skip
    assert report.written and not report.failed
    with tifffile.TiffFile(out / "slide.tif") as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].tilelength == 256
        mask = tif.pages[0].asarray() > 0
    opts = InstanceOptions(simplify=0)
    objects = write_prediction_objects([tmp_path / "slide.tif"], out, opts)
    assert objects.objects == 5
    feats = json.loads((out / "slide.geojson").read_text())["features"]
    assert all(f["geometry"]["type"] == "Polygon" for f in feats)
    corner = [f for f in feats if f["properties"]["bbox_x0"] < 256 < f["properties"]["bbox_x1"]
              and f["properties"]["bbox_y0"] < 256 < f["properties"]["bbox_y1"]]  # fmt: skip
    assert len(corner) == 1  # one polygon, not four pieces
    assert abs(corner[0]["properties"]["area_px2"] - disc(shape, 256, 256, 40).sum()) < 300
    prob = tifffile.imread(out / "probabilities" / "slide.tif") / 255.0
    whole = objects_from_arrays(mask, prob, opts)
    assert [f["properties"]["area_px2"] for f in feats] == [o.area_px for o in whole]
    assert [f["properties"]["mean_probability"] for f in feats] == pytest.approx(
        [o.mean_probability for o in whole], abs=1e-6
    )
