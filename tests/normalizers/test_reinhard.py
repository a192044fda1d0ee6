"""Reinhard in LAB: statistics matched to the reference, edge cases."""

from __future__ import annotations

import pytest
import torch
from kornia.color import rgb_to_lab

from stainadapt.errors import InputError
from stainadapt.normalizers import Reinhard, TissueWarning


def _lab_stats(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lab = rgb_to_lab(img.float()[None] / 255)[0].reshape(3, -1)
    return lab.mean(dim=1), lab.std(dim=1, unbiased=False)


def test_matches_reference_statistics(ihc_t, ref_t):
    norm = Reinhard(max_samples=2**18).fit(ref_t)  # every pixel: exact statistics
    mean, std = _lab_stats(ref_t)
    torch.testing.assert_close(norm.lab_mean, mean, atol=1e-3, rtol=1e-4)
    out = norm(ihc_t)
    omean, ostd = _lab_stats(out)
    torch.testing.assert_close(omean, mean, atol=1.0, rtol=0)
    torch.testing.assert_close(ostd, std, atol=1.5, rtol=0)


def test_unfitted_is_an_error(ihc_t):
    with pytest.raises(InputError, match="not fitted"):
        Reinhard()(ihc_t)


def test_state_dict_has_fitted_flag(ref_t, ihc_t):
    norm = Reinhard(tissue_only=True).fit(ref_t)
    other = Reinhard(tissue_only=True)
    other.load_state_dict(norm.state_dict())
    assert torch.equal(other(ihc_t), norm(ihc_t))


def test_blank_and_single_colour(ref_t):
    norm = Reinhard().fit(ref_t)
    for value in (255, 120):
        tile = torch.full((3, 32, 32), value, dtype=torch.uint8)
        with pytest.warns(TissueWarning):
            assert torch.equal(norm(tile), tile)


def test_batch_equals_loop(ihc_t, ref_t):
    norm = Reinhard().fit(ref_t)
    tiles = torch.stack([ihc_t[:, :128, :128], ihc_t[:, 300:428, 100:228]])
    assert torch.equal(norm(tiles), torch.stack([norm(t) for t in tiles]))
