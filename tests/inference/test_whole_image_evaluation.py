"""Whole-image evaluation goes through the sliding-window predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import blob_image

from stainadapt.inference import (
    SlidingWindowPredictor,
    evaluate_model,
    load_domain_images,
    predict_probs,
)
from stainadapt.metrics import segmentation_metrics

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net():
    from stainadapt.models.unet import SegmentationNet

    torch.manual_seed(0)
    return SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))


@pytest.mark.parametrize("h,w,tile", [(64, 64, 64), (100, 90, 128)])
def test_predict_probs_is_the_whole_image_window(net, h, w, tile):
    image = blob_image(h, w, seed=h)
    prob = predict_probs(net, image, CPU)
    assert isinstance(prob, torch.Tensor) and prob.shape == (h, w)
    whole = SlidingWindowPredictor(net, tile, 0, batch_size=1, device=CPU, min_tissue=0)
    np.testing.assert_array_equal(prob.numpy(), whole.predict(image))


def test_evaluate_model_scores_the_predictor_output(net):
    image = blob_image(100, 90, seed=5)
    rng = np.random.default_rng(5)
    truth = rng.random((100, 90)) > 0.5
    predicted = SlidingWindowPredictor(net, 128, 0, batch_size=1, min_tissue=0).predict(image)
    want = segmentation_metrics(predicted > 0.5, truth)
    net.train()
    got = evaluate_model(net, [("a", image, truth), ("no mask", image, None)], CPU)
    assert net.training  # left as it came
    assert got["n"] == 1 and got["dice_std"] == 0.0
    assert got["dice"] == pytest.approx(want["dice"]) and got["accuracy"] == pytest.approx(
        want["accuracy"]
    )
    same = evaluate_model(net, [("a", image, predicted > 0.5)], CPU)
    assert same["dice"] == 1.0 and same["accuracy"] == 1.0
    assert evaluate_model(net, [("no mask", image, None)], CPU) == {}


def test_flip_tta_averages_the_four_flips_of_the_whole_image(net):
    image = blob_image(64, 64, seed=3)
    plain = predict_probs(net, image, CPU).numpy()
    flips = [(), (0,), (1,), (0, 1)]
    want = np.mean([np.flip(predict_probs(net, np.flip(image, axes).copy(), CPU).numpy(), axes)
                    for axes in flips], axis=0)
    got = predict_probs(net, image, CPU, tta=True).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - plain).max() > 1e-4  # an untrained net is not flip-symmetric
    truth = want > np.median(want)
    scored = evaluate_model(net, [("a", image, truth)], CPU, tta=True)
    assert scored["dice"] == pytest.approx(segmentation_metrics(got > 0.5, truth)["dice"])


def test_load_domain_images(tmp_path):
    from types import SimpleNamespace

    from stainadapt.data.io import write_image

    image = blob_image(40, 50)
    write_image(tmp_path / "a.png", image)
    write_image(tmp_path / "a_mask.png", (image[..., 0] < 128))
    samples = [SimpleNamespace(name="a", image=tmp_path / "a.png", mask=tmp_path / "a_mask.png"),
               SimpleNamespace(name="b", image=tmp_path / "a.png", mask=None)]
    items = load_domain_images(samples, with_masks=True)
    assert [n for n, _, _ in items] == ["a", "b"]
    np.testing.assert_array_equal(items[0][1], image)
    np.testing.assert_array_equal(items[0][2], image[..., 0] < 128)
    assert items[1][2] is None
    assert load_domain_images(samples, with_masks=False)[0][2] is None
