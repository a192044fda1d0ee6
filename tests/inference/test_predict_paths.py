"""predict_paths: the streamed branch for TIFFs and the report."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from conftest import blob_image

from stainadapt.errors import RunFailure
from stainadapt.inference import PredictOptions, collect_inputs, predict_paths
from stainadapt.models.unet import SegmentationNet
from stainadapt.runs import save_model


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))
    save_model(tmp_path / "run", net, {"image_size": 64})
    return tmp_path / "run"


def test_streamed_tiff_branch_equals_in_memory(run, tmp_path):
    img = blob_image(150, 170, seed=8)
    tifffile.imwrite(tmp_path / "s.tif", img, photometric="rgb", tile=(64, 64))
    common = dict(device="cpu", min_tissue=0, probabilities=True)
    r1 = predict_paths([tmp_path / "s.tif"], run, tmp_path / "a", stream_min_pixels=0, **common)
    r2 = predict_paths([tmp_path / "s.tif"], run, tmp_path / "b", stream_min_pixels=10**9, **common)
    assert r1.written and r2.written and not r1.failed
    with tifffile.TiffFile(tmp_path / "a" / "s.tif") as tif:
        assert tif.pages[0].is_tiled
        streamed = tif.pages[0].asarray()
    np.testing.assert_array_equal(streamed, tifffile.imread(tmp_path / "b" / "s.tif"))
    pa = tifffile.imread(tmp_path / "a" / "probabilities" / "s.tif").astype(int)
    pb = tifffile.imread(tmp_path / "b" / "probabilities" / "s.tif").astype(int)
    assert np.abs(pa - pb).max() <= 1
    assert r1.tiles_total == 3 * 4  # 150 rows: 3 windows of 64 at step <= 48; 170 cols: 4


def test_report_failures(run, tmp_path):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "ok.tif", blob_image(64, 64), photometric="rgb")
    (tmp_path / "in" / "bad.tif").write_bytes(b"II*\x00garbage")
    report = predict_paths([tmp_path / "in"], run, tmp_path / "o", device="cpu")
    assert [p.name for p in report.written] == ["ok.tif"]
    assert [p.name for p, _ in report.failed] == ["bad.tif"]
    with pytest.raises(RunFailure, match="bad.tif"):
        report.raise_for_failures()


def test_collect_inputs_name_clash(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "b" / "x.tif").write_bytes(b"")
    with pytest.raises(Exception, match="same name"):
        collect_inputs([tmp_path / "a", tmp_path / "b"])


def test_options_object_and_keywords_agree(run, tmp_path):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "x.tif", blob_image(80, 70, seed=2), photometric="rgb")
    options = PredictOptions(device="cpu", tile=32, min_tissue=0, probabilities=True)
    a = predict_paths([tmp_path / "in"], run, tmp_path / "a", options)
    b = predict_paths([tmp_path / "in"], run, tmp_path / "b", device="cpu", tile=32,
                      min_tissue=0, probabilities=True)
    assert a.tiles_total == b.tiles_total == 3 * 3
    for name in ("x.tif", "probabilities/x.tif"):
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "a" / name), tifffile.imread(tmp_path / "b" / name)
        )
    # keywords override the object's fields; the object itself is left as it was
    c = predict_paths([tmp_path / "in"], run, tmp_path / "a", options, overwrite=True)
    assert c.written and not c.existing and options.overwrite is False
    with pytest.raises(TypeError):
        predict_paths([tmp_path / "in"], run, tmp_path / "a", no_such_option=1)
