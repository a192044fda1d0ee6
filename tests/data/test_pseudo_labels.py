"""Pseudo-labels with an unsure class: class-balanced cuts, the file format, crops that
carry the unsure pixels, and a loss that leaves them out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stainadapt.data.dataset import CropDataset
from stainadapt.data.folders import Sample
from stainadapt.data.io import write_image
from stainadapt.data.pseudo_labels import (
    IGNORE,
    UNSURE_PIXEL,
    class_balanced_cuts,
    compact_probs,
    downsample_pseudo_label,
    encode_pseudo_label,
    read_pseudo_label,
)
from stainadapt.engine.losses import seg_loss


def _probs(seed: int = 0) -> list[np.ndarray]:
    """Mostly confident background, a smaller and less sure glomerulus class."""
    rng = np.random.default_rng(seed)
    bg = rng.beta(1, 12, size=(2, 80, 80))
    fg = rng.beta(5, 2, size=(2, 80, 80))
    share = rng.random((2, 80, 80)) < 0.1
    return list(np.where(share, fg, bg).astype(np.float32))


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8])
def test_each_class_keeps_its_share_of_most_confident_pixels(keep):
    probs = _probs()
    fg_min, bg_max = class_balanced_cuts(probs, 0.5, keep)
    labels = [encode_pseudo_label(p, 0.5, fg_min, bg_max) for p in probs]
    every = np.concatenate([p.ravel() for p in probs])
    coded = np.concatenate([x.ravel() for x in labels])
    fg = every > 0.5
    kept_fg = (coded[fg] == 255).mean()
    kept_bg = (coded[~fg] == 0).mean()
    # the same share of each class, to within one 8-bit level's pixels
    assert keep <= kept_fg < keep + 0.06 and keep <= kept_bg < keep + 0.06
    # the kept glomerulus pixels are the surest ones: none unsure is surer than a kept one
    assert every[fg][coded[fg] == UNSURE_PIXEL].max() <= every[fg][coded[fg] == 255].min()
    assert every[~fg][coded[~fg] == UNSURE_PIXEL].min() >= every[~fg][coded[~fg] == 0].max()
    # a global cut would have kept far fewer glomerulus pixels than the balanced one
    confidence = np.where(fg, every, 1 - every)
    global_cut = np.quantile(confidence, 1 - keep)
    assert (confidence[fg] >= global_cut).mean() < kept_fg


def test_keep_one_labels_every_pixel_as_threshold_does():
    probs = _probs(1)
    assert class_balanced_cuts(probs, 0.5, 1.0) == (0.0, 1.0)
    label = encode_pseudo_label(probs[0], 0.5)
    assert set(np.unique(label)) <= {0, 255}
    assert np.array_equal(label == 255, probs[0] > 0.5)
    with pytest.raises(ValueError, match="keep"):
        class_balanced_cuts(probs, 0.5, 0.0)


def test_file_round_trip_and_downsampling_keep_unsure_pixels(tmp_path):
    label = np.zeros((8, 8), np.uint8)
    label[:4, :4] = 255
    label[4:, 4:] = UNSURE_PIXEL
    write_image(tmp_path / "a.png", label)
    back = read_pseudo_label(tmp_path / "a.png")
    assert back.dtype == np.float32
    assert (back[:4, :4] == 1).all() and (back[4:, 4:] == IGNORE).all()
    assert (back[:4, 4:] == 0).all()
    small = downsample_pseudo_label(back, 2.0)
    assert small.shape == (4, 4)
    assert (small[:2, :2] == 1).all() and (small[2:, 2:] == IGNORE).all()


def test_pseudo_crops_carry_unsure_pixels_and_centre_on_sure_glomeruli(tmp_path):
    image = np.full((64, 64, 3), 200, np.uint8)
    label = np.full((64, 64), UNSURE_PIXEL, np.uint8)
    label[40:50, 40:50] = 255
    label[:8] = 0
    write_image(tmp_path / "img.png", image)
    write_image(tmp_path / "lab.png", label)
    s = Sample(name="img", image=tmp_path / "img.png", mask=tmp_path / "lab.png")
    ds = CropDataset([s], 32, length=20, pseudo=True, foreground_share=1.0)
    values = set()
    for i in range(len(ds)):
        crop = ds[i]["mask"]
        values |= set(torch.unique(crop).tolist())
        assert (crop == 1).any()  # every crop is placed on the sure glomerulus
    assert values == {IGNORE, 1.0} or values == {IGNORE, 0.0, 1.0}


def test_loss_leaves_unsure_pixels_out():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, generator=g, requires_grad=True)
    target = (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float()
    unsure = torch.rand(2, 1, 16, 16, generator=g) > 0.5
    label = torch.where(unsure, torch.full_like(target, IGNORE), target)
    loss = seg_loss(logits, label, dice_weight=1.0, ignore_unsure=True)
    loss.backward()
    assert torch.all(logits.grad[unsure] == 0) and torch.any(logits.grad[~unsure] != 0)
    # the BCE part is the mean over the sure pixels only
    bce = seg_loss(logits.detach(), label, ignore_unsure=True)
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.detach()[~unsure], target[~unsure])
    assert torch.allclose(bce, want)
    # with nothing unsure it is the plain loss
    plain = seg_loss(logits.detach(), target, dice_weight=1.0)
    assert torch.allclose(seg_loss(logits.detach(), target, 1.0, ignore_unsure=True), plain)


def test_the_self_training_step_skips_unsure_target_pixels():
    """seg_term: a pseudo-labelled target row that is all unsure adds nothing."""
    from types import SimpleNamespace

    from stainadapt.engine.steps import StepBatch, seg_term

    g = torch.Generator().manual_seed(1)
    xs = torch.rand(2, 3, 8, 8, generator=g)
    ys = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    yt = torch.full((2, 1, 8, 8), IGNORE)
    batch = StepBatch(xs, ys, xs, yt, torch.cat([xs, xs]), 2, use_t=True, t_labelled=True,
                      tgt_labelled=False)
    logits = torch.randn(4, 1, 8, 8, generator=g)
    source_only = seg_loss(logits[:2], ys, 1.0)
    filtered = SimpleNamespace(cfg=SimpleNamespace(dice_weight=1.0, self_train_keep=0.5))
    assert torch.allclose(seg_term(filtered, batch, logits), source_only)
    unfiltered = SimpleNamespace(cfg=SimpleNamespace(dice_weight=0.0, self_train_keep=1.0))
    assert seg_term(unfiltered, batch, logits) > seg_loss(logits[:2], ys)


@pytest.mark.parametrize("threshold", [0.5, 0.6, 0.3])
def test_one_byte_guesses_label_as_the_probabilities_do(threshold):
    probs = _probs(2)
    probs[0][0, :4] = [threshold, threshold + 1e-6, threshold - 1e-6, 153 / 255]
    compact = [compact_probs(p, threshold) for p in probs]
    assert all(c.dtype == np.uint8 for c in compact)
    cuts = class_balanced_cuts(compact, threshold, 0.5)
    assert cuts == class_balanced_cuts(probs, threshold, 0.5)
    for p, c in zip(probs, compact, strict=True):
        assert np.array_equal(encode_pseudo_label(c, threshold, *cuts),
                              encode_pseudo_label(p, threshold, *cuts))
        assert np.array_equal(encode_pseudo_label(c, threshold) == 255, p > threshold)
