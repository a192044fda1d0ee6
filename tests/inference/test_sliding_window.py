"""Sliding-window geometry, weights, blending, sizes and seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DarkBlobNet, blob_image

from stainadapt.errors import InputError
from stainadapt.inference import (
    SlidingWindowPredictor,
    gaussian_weight,
    sliding_window_predict,
    window_starts,
    window_tissue_fraction,
)
from stainadapt.metrics import segmentation_metrics


@pytest.mark.parametrize(
    "length,tile,overlap",
    [(256, 64, 16), (97, 64, 16), (64, 64, 16), (30, 64, 16), (1000, 256, 64), (300, 64, 0)],
)
def test_window_starts_cover_and_overlap(length, tile, overlap):
    starts = window_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] == max(0, length - tile)
    steps = np.diff(starts)
    assert (steps <= tile - overlap).all() and (steps > 0).all()


def test_gaussian_weight_peak_sigma_no_zeros():
    w = gaussian_weight(64)
    assert w.shape == (64, 64) and w.dtype == torch.float32
    assert float(w.max()) == pytest.approx(1.0, abs=1e-6)
    assert float(w.min()) > 0
    assert torch.allclose(w, w.T) and torch.allclose(w, w.flip(0))
    # sigma = tile / 8 = 8 around the centre 31.5: pixels 31 and 39 are 0.5 and 7.5 away.
    g = w[31]
    expected = np.exp(-(7.5**2 - 0.5**2) / (2 * 8.0**2))
    assert float(g[39] / g[31]) == pytest.approx(expected, rel=1e-4)


def test_window_tissue_fraction_glass_vs_tissue():
    glass = np.full((64, 64, 3), 240, np.uint8)
    tissue = np.full((64, 64, 3), 120, np.uint8)
    assert window_tissue_fraction(glass) == 0.0
    assert window_tissue_fraction(tissue) == 1.0


@pytest.mark.parametrize("h,w", [(97, 131), (64, 64), (30, 45), (200, 70)])
def test_output_has_input_size(blob_net, h, w):
    img = blob_image(h, w, seed=h)
    prob = sliding_window_predict(blob_net, img, tile=64, overlap=16, min_tissue=0)
    assert prob.shape == (h, w) and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1


def test_real_segmentation_net_odd_size():
    from stainadapt.models.unet import SegmentationNet

    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8)).eval()
    prob = sliding_window_predict(net, blob_image(97, 131), tile=64, overlap=16, min_tissue=0)
    assert prob.shape == (97, 131)


def test_seams_agree_with_one_tile(blob_net):
    img = blob_image(256, 256, seed=3)
    tiled = sliding_window_predict(blob_net, img, tile=64, overlap=16, min_tissue=0)
    whole = sliding_window_predict(blob_net, img, tile=256, overlap=0, min_tissue=0)
    truth = whole > 0.5
    assert truth.mean() > 0.05  # there is something to segment
    assert segmentation_metrics(tiled > 0.5, truth)["dice"] >= 0.99
    assert np.abs(tiled - whole).mean() < 0.01


def test_tta_and_batch_size_do_not_change_a_symmetric_model(blob_net):
    img = blob_image(128, 160, seed=5)
    a = sliding_window_predict(blob_net, img, tile=64, overlap=16, min_tissue=0, batch_size=1)
    b = sliding_window_predict(blob_net, img, tile=64, overlap=16, min_tissue=0, batch_size=7)
    c = sliding_window_predict(blob_net, img, tile=64, overlap=16, min_tissue=0, tta=True)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - c).mean() < 0.02  # flips only move the zero padding around


def test_background_windows_skipped_and_zero(blob_net):
    img = np.full((128, 256, 3), 245, np.uint8)
    img[:, :64] = 90  # tissue in the first column of windows only
    pred = SlidingWindowPredictor(blob_net, 64, 0)
    prob = pred.predict(img)
    assert pred.stats.tiles_total == 8 and pred.stats.tiles_skipped == 6
    assert (prob[:, 128:] == 0).all()
    assert (prob[:, :60] > 0.5).all()


def test_normalizer_applied_per_window(blob_net):
    class Darken(torch.nn.Module):
        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[-1] == 64
            return (x // 4).to(torch.uint8)

    img = np.full((64, 64, 3), 200, np.uint8)
    plain = sliding_window_predict(blob_net, img, tile=64, min_tissue=0)
    dark = sliding_window_predict(blob_net, img, tile=64, min_tissue=0, normalizer=Darken())
    inner = (slice(4, -4), slice(4, -4))  # the conv's zero padding darkens the rim
    assert plain[inner].max() < 0.5 < dark[inner].min()


def test_bad_tile_and_overlap_are_input_errors(blob_net):
    with pytest.raises(InputError, match="multiple of 32"):
        SlidingWindowPredictor(blob_net, 100)
    with pytest.raises(InputError, match="overlap"):
        SlidingWindowPredictor(blob_net, 64, 64)


def test_bf16_autocast_runs_on_cpu():
    net = DarkBlobNet().eval()
    prob = sliding_window_predict(net, blob_image(64, 96), tile=64, amp="bf16", min_tissue=0)
    assert prob.shape == (64, 96)


class _LoggedRows:
    """A reader that records which rows it was asked for, from which thread."""

    def __init__(self, image: np.ndarray, fail_at: int | None = None) -> None:
        self.image, self.shape, self.fail_at = image, image.shape[:2], fail_at
        self.calls: list[tuple[int, int]] = []

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        import threading

        self.calls.append((y0, threading.get_ident()))
        if self.fail_at is not None and y0 >= self.fail_at:
            raise InputError("slide.svs: bad tile")
        return self.image[y0:y1]


def test_bands_are_read_ahead_in_one_thread_with_the_same_pixels(blob_net):
    import threading

    image = blob_image(300, 200)
    pred = SlidingWindowPredictor(blob_net, 64, batch_size=4, min_tissue=0)
    reader = _LoggedRows(image)
    rows = dict(pred.predict_rows(reader))
    out = np.concatenate([rows[y] for y in sorted(rows)])
    np.testing.assert_array_equal(out, pred.predict(image))
    starts = [y for y, _ in reader.calls]
    assert starts == sorted(starts) and len(starts) == len(set(starts)) > 1
    threads = {tid for _, tid in reader.calls}
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_a_read_error_reaches_the_caller(blob_net):
    pred = SlidingWindowPredictor(blob_net, 64, batch_size=4, min_tissue=0)
    with pytest.raises(InputError, match="bad tile"):
        list(pred.predict_rows(_LoggedRows(blob_image(300, 200), fail_at=100)))
