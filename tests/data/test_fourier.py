"""Fourier amplitude swap (FDA): colours from the target, structure from the source, and
the trainer applying it to source rows only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stainadapt.config import TrainConfig
from stainadapt.data.fourier import AmplitudeSwap, amplitude_swap, band_halfwidth
from stainadapt.engine.steps import STEPS
from stainadapt.engine.trainer import Trainer
from stainadapt.errors import InputError


def _images(seed: int, base: tuple[float, float, float], n: int = 2, size: int = 64
            ) -> torch.Tensor:
    """Mid-range images of one colour with fine texture (nothing clipped at 0 or 1)."""
    g = torch.Generator().manual_seed(seed)
    texture = 0.15 * (torch.rand(n, 1, size, size, generator=g) - 0.5)
    return torch.tensor(base).view(1, 3, 1, 1) + texture.expand(n, 3, size, size)


def _high_pass(x: torch.Tensor) -> torch.Tensor:
    return x - F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)


def test_the_swap_takes_the_targets_colour_and_keeps_the_sources_structure():
    source = _images(0, (0.7, 0.3, 0.6))
    target = _images(1, (0.4, 0.5, 0.3))
    out = amplitude_swap(source, target, 0.05)
    assert out.shape == source.shape and out.dtype == source.dtype
    # the zero frequency is in the band: each channel's mean is the target's
    torch.testing.assert_close(out.mean((2, 3)), target.mean((2, 3)), atol=2e-3, rtol=0)
    assert (out.mean((2, 3)) - source.mean((2, 3))).abs().max() > 0.2
    # fine texture is the source's, not the target's
    hp_out, hp_src, hp_tgt = _high_pass(out), _high_pass(source), _high_pass(target)
    corr_src = F.cosine_similarity(hp_out.flatten(1), hp_src.flatten(1)).min()
    corr_tgt = F.cosine_similarity(hp_out.flatten(1), hp_tgt.flatten(1)).abs().max()
    assert corr_src > 0.9 and corr_tgt < 0.2


def test_beta_zero_and_an_image_with_itself_change_nothing():
    source = _images(0, (0.7, 0.3, 0.6))
    assert amplitude_swap(source, _images(1, (0.2, 0.2, 0.2)), 0.0) is source
    torch.testing.assert_close(amplitude_swap(source, source, 0.1), source, atol=1e-5, rtol=0)
    assert band_halfwidth(64, 128, 0.05) == 3  # floor(0.05 * min(H, W)), as the paper
    assert band_halfwidth(64, 64, 0.01) == 0  # a band too thin for the crop: a no-op


def test_source_rows_pair_with_target_rows_in_turn():
    source = _images(0, (0.5, 0.5, 0.5), n=3)
    target = torch.cat([_images(1, (0.3, 0.4, 0.5), n=1), _images(2, (0.6, 0.5, 0.4), n=1)])
    means = AmplitudeSwap(0.1)(source, target).mean((2, 3))
    expected = target.mean((2, 3))[[0, 1, 0]]
    torch.testing.assert_close(means, expected, atol=2e-3, rtol=0)


def test_bad_inputs_say_why():
    with pytest.raises(ValueError, match=r"fda_beta must be in \[0, 0.5\)"):
        AmplitudeSwap(0.5)
    with pytest.raises(ValueError, match="differ in size"):
        amplitude_swap(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 16, 16), 0.1)
    with pytest.raises(InputError, match="fda_beta needs a target domain"):
        TrainConfig(source="s", mode="source-only", fda_beta=0.05).validate()
    with pytest.raises(InputError, match="fda_beta must be"):
        TrainConfig(source="s", target="t", mode="source-only", fda_beta=-0.1).validate()


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_source_only_steps_read_target_crops_only_for_their_colours(tmp_path, domains, beta):
    s, t = domains
    cfg = TrainConfig(source=str(s), target=str(t), out=str(tmp_path / "run"),
                      mode="source-only", backbone="resnet18", image_size=64, batch_size=2,
                      steps_per_epoch=2, pretrain_epochs=1, disc_epochs=0, adv_epochs=0,
                      device="cpu", samples=0, augment=False, fda_beta=beta)
    seen = []

    def recording_seg_step(t, batch, acc):
        seen.append(batch)
        STEPS["seg"](t, batch, acc)

    Trainer(cfg, steps={"seg": recording_seg_step}).fit()
    assert len(seen) == 2
    for batch in seen:
        assert batch.x is batch.xs and not batch.use_t  # G trains on source rows only
        if beta == 0:
            assert batch.xt is None  # without the swap the target is not read
            continue
        assert batch.xt is not None and batch.xt.shape == batch.xs.shape
        torch.testing.assert_close(batch.xs.mean((2, 3)), batch.xt.mean((2, 3)),
                                   atol=0.03, rtol=0)
