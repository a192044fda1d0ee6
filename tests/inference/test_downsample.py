"""A model trained on coarser tiles (``downsample``): trained, saved, and fed every input
at its own scale -- PNG, slide, evaluation and the test-time adaptation sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DiscSizeNet
from PIL import Image

from stainadapt.config import TrainConfig
from stainadapt.data.dataset import CropDataset
from stainadapt.data.folders import scan_domain
from stainadapt.data.resample import (
    downsample_image,
    downsample_mask,
    scaled_shape,
    upsample_probs,
)
from stainadapt.engine.trainer import train
from stainadapt.errors import InputError
from stainadapt.inference import predict_paths, predict_probs
from stainadapt.inference.adapt_sample import sample_windows
from stainadapt.runs import load_model

GROUND, DARK = (200, 170, 190), (70, 40, 110)
BIG, SMALL = 24, 12  # disc radii on the stored image; the stand-in answers to 9-14


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy + 0.5) ** 2 + (xx - cx + 0.5) ** 2 <= r * r


def _stand_in() -> DiscSizeNet:
    """Finds discs of radius about 9-14 px: BIG ones only at half scale, SMALL ones only
    at full scale."""
    return DiscSizeNet(small=5, large=11, guard=8, grow=3)


BIG_AT = [(70, 80), (200, 260)]
SMALL_AT = [(80, 250), (210, 90)]


def _image(h: int = 300, w: int = 340) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = GROUND
    for cy, cx in BIG_AT:
        img[_disc(h, w, cy, cx, BIG)] = DARK
    for cy, cx in SMALL_AT:
        img[_disc(h, w, cy, cx, SMALL)] = DARK
    return img


def _found(mask: np.ndarray) -> tuple[list[bool], list[bool]]:
    h, w = mask.shape
    big = [mask[_disc(h, w, cy, cx, BIG - 4)].mean() > 0.9 for cy, cx in BIG_AT]
    small = [bool(mask[_disc(h, w, cy, cx, SMALL)].any()) for cy, cx in SMALL_AT]
    return big, small


def test_resampling_keeps_shapes_areas_and_the_identity():
    img = _image()
    assert downsample_image(img, 1.0) is img
    assert downsample_image(img, 2.0).shape == (150, 170, 3)
    assert scaled_shape((301, 7), 2.0) == (150, 4) and scaled_shape((1, 1), 4.0) == (1, 1)
    mask = np.zeros((512, 512), bool)
    mask[101:301, 51:201] = True
    small = downsample_mask(mask, 2.0)
    assert small.dtype == bool and small.shape == (256, 256)
    assert abs(int(small.sum()) * 4 - int(mask.sum())) <= 2 * (200 + 150)  # the edge pixels
    probs = np.linspace(0, 1, 150 * 170, dtype=np.float32).reshape(150, 170)
    back = upsample_probs(probs, (300, 340))
    assert back.shape == (300, 340) and back.dtype == np.float32
    assert back.min() >= 0.0 and back.max() <= 1.0


def test_crops_come_from_the_downsampled_tile(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = _image()
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[_disc(*img.shape[:2], *BIG_AT[0], BIG)] = 255
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    samples = scan_domain(tmp_path, require_masks=True)
    full = CropDataset(samples, 64, length=1)
    half = CropDataset(samples, 64, length=1, downsample=2.0)
    assert full._decoded[0][0].shape == (300, 340, 3)
    assert half._decoded[0][0].shape == (150, 170, 3)
    assert np.array_equal(half._decoded[0][0], downsample_image(img, 2.0))
    share = half._decoded[0][1].mean() / (mask > 0).mean()
    assert share == pytest.approx(1.0, abs=0.05)  # the glomerulus keeps its area
    with pytest.raises(ValueError, match="downsample"):
        CropDataset(samples, 64, downsample=0.5)


@pytest.mark.parametrize("downsample, big, small", [(1.0, False, True), (2.0, True, False)])
def test_whole_image_prediction_at_the_model_scale(downsample, big, small):
    net = _stand_in()
    net.downsample = downsample
    prob = predict_probs(net, _image(), torch.device("cpu")).numpy()
    assert prob.shape == (300, 340)  # always the input's own size
    found_big, found_small = _found(prob > 0.5)
    assert found_big == [big, big] and found_small == [small, small]


def test_predict_writes_full_size_masks_of_a_downsampled_model(tmp_path, monkeypatch):
    net = _stand_in()
    net.downsample = 2.0
    monkeypatch.setattr("stainadapt.inference.paths.load_model",
                        lambda model, device="cpu": (net, {"image_size": 64, "mpp": None}))
    Image.fromarray(_image()).save(tmp_path / "a.png")
    report = predict_paths([tmp_path / "a.png"], "stand-in", tmp_path / "out", device="cpu")
    assert not report.failed
    mask = np.asarray(Image.open(tmp_path / "out" / "a.png")) > 0
    assert mask.shape == (300, 340)
    assert _found(mask) == ([True, True], [False, False])


def test_adaptation_sample_is_cut_at_the_model_scale(tmp_path):
    Image.fromarray(_image()).save(tmp_path / "a.png")
    windows, _ = sample_windows([tmp_path / "a.png"], 64, 100, min_tissue=0.0,
                                model_downsample=2.0)
    half = downsample_image(_image(), 2.0)
    # 150 x 170 at half scale: 3 x 3 windows of 64 with the least overlap
    assert len(windows) == 9
    assert any(np.array_equal(w, half[:64, :64]) for w in windows)


def test_training_records_the_scale_and_predict_reads_it(tmp_path, domains):
    s, _ = domains
    cfg = TrainConfig(source=str(s), mode="source-only", out=str(tmp_path / "run"),
                      backbone="resnet18", image_size=32, batch_size=2, steps_per_epoch=1,
                      pretrain_epochs=1, disc_epochs=0, adv_epochs=0, device="cpu",
                      samples=0, downsample=2.0, mpp=0.5, val_fraction=0.4)
    train(cfg)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["downsample"] == 2.0 and meta["mpp"] == pytest.approx(1.0)
    model, _ = load_model(tmp_path / "run")
    assert model.downsample == 2.0
    with pytest.raises(InputError, match="downsample"):
        TrainConfig(source=str(s), mode="source-only", downsample=0.5).validate()
    # adapting a G at another scale than it learned at is refused, naming the flag
    again = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "again"), "downsample": 1.0,
                           "init": str(tmp_path / "run"), "mpp": None})
    with pytest.raises(InputError, match="give --downsample 2"):
        train(again)
