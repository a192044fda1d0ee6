"""Vahadane: white background (never cyan), stable order, batch and dtype behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stainadapt.data.synth import make_tile, tile_rng
from stainadapt.errors import InputError
from stainadapt.normalizers import Macenko, Reinhard, Vahadane
from stainadapt.normalizers.base import TissueWarning
from stainadapt.normalizers.vahadane import sparse_nmf


def test_background_stays_white(ihc_t, ref_t):
    img = ihc_t.clone()
    img[:, :, :200] = 250  # glass
    out = Vahadane().fit(ref_t)(img)
    bg = out[:, :, :200].float()
    assert bg.min() >= 225, "background must map to white-ish"
    spread = bg.amax(dim=0) - bg.amin(dim=0)
    assert spread.max() <= 5, "background must stay neutral (no cyan)"


def test_stain_order_and_stability(ihc_t):
    a = Vahadane().fit(ihc_t).stain_matrix
    flat = ihc_t.reshape(3, -1)
    perm = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(0))
    b = Vahadane().fit(flat[:, perm].reshape(ihc_t.shape)).stain_matrix
    assert a[0, 0] > a[0, 1]  # hematoxylin first
    assert (a >= 0).all()
    torch.testing.assert_close(a, b, atol=0.02, rtol=0)
    # close to the Macenko estimate it starts from, but refined
    m = Macenko().fit(ihc_t).stain_matrix
    assert (a * m).sum(dim=0).min() > 0.95


def test_sparse_nmf_recovers_known_stains():
    gen = torch.Generator().manual_seed(0)
    w_true = torch.tensor([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]], dtype=torch.float64)
    w_true = w_true / w_true.norm(dim=0)
    h = torch.rand(2, 4000, generator=gen, dtype=torch.float64)
    h[0, 1::3] = 0  # pure eosin pixels
    h[1, 2::3] = 0  # pure hematoxylin pixels: the cone is identifiable
    v = (w_true @ h)[None]
    w0 = torch.tensor([[0.8, 0.3], [0.5, 0.9], [0.3, 0.3]], dtype=torch.float64)[None]
    w = sparse_nmf(v, w0, lam=0.1, n_iter=50)
    torch.testing.assert_close(w[0], w_true, atol=0.03, rtol=0)


def test_batch_equals_loop(ihc_t, ref_t):
    norm = Vahadane().fit(ref_t)
    tiles = torch.stack([ihc_t[:, :128, :128], ihc_t[:, 200:328, 300:428]])
    assert torch.equal(norm(tiles), torch.stack([norm(t) for t in tiles]))


def test_float64_matches_float32(ihc_t, ref_t):
    n32 = Vahadane().fit(ref_t)
    n64 = Vahadane().double().fit(ref_t)
    torch.testing.assert_close(n32.stain_matrix.double(), n64.stain_matrix, atol=1e-3, rtol=0)
    assert (n32(ihc_t).int() - n64(ihc_t).int()).abs().max() <= 2


def _near_blank(seed: int, n_dark: int, size: int = 64) -> torch.Tensor:
    """White glass with ``n_dark`` scattered tissue-dark pixels (under 1 %: too little tissue)."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal((232, 230, 236), 3, (size, size, 3)), 0, 255)
    idx = rng.choice(size * size, n_dark, replace=False)
    img.reshape(-1, 3)[idx] = rng.integers(40, 200, (n_dark, 3))
    return torch.from_numpy(img.round().astype(np.uint8)).permute(2, 0, 1).contiguous()


def _tissue(seed: int = 0) -> torch.Tensor:
    tile = make_tile("pasm", 64, tile_rng(seed, "pasm", 0))[0]
    return torch.from_numpy(tile).permute(2, 0, 1).contiguous()


# (seed, dark pixels) where the NMF's stain vectors collapse onto one colour: these
# raised LinAlgError (a singular 2x2 solve) before the degenerate-estimate check.
COLLAPSING = [(0, 25), (28, 15), (55, 10)]


@pytest.mark.parametrize(("seed", "n_dark"), COLLAPSING)
@pytest.mark.parametrize(
    ("cls", "fitted"),
    [(Vahadane, False), (Vahadane, True), (Macenko, False), (Macenko, True), (Reinhard, True)],
)
def test_near_blank_with_dark_pixels_passes_through(cls, fitted, seed, n_dark):
    """The blank tile passes through with a warning; its batch neighbour is normalised."""
    norm = cls().fit(_tissue(7)) if fitted else cls()  # unfitted: the built-in H&E reference
    blank, tissue = _near_blank(seed, n_dark), _tissue()
    with pytest.warns(TissueWarning, match="1 of 2"):
        out = norm(torch.stack([blank, tissue]))
    assert torch.equal(out[0], blank)
    assert torch.equal(out[1], norm(tissue))  # exactly as on its own
    assert (out[1].float() - tissue.float()).abs().mean() > 1.0
    with pytest.warns(TissueWarning, match="1 of 1"):
        assert torch.equal(norm(blank), blank)


@pytest.mark.parametrize(("seed", "n_dark"), COLLAPSING)
def test_near_blank_reference_is_refused(seed, n_dark):
    with pytest.raises(InputError, match="too little tissue"):
        Vahadane().fit(_near_blank(seed, n_dark))


def test_near_blank_counts_as_degenerate_with_no_tissue_minimum():
    """With ``min_tissue=0`` the collapse itself makes the estimate degenerate."""
    blank = _near_blank(*COLLAPSING[0])
    with pytest.warns(TissueWarning):
        assert torch.equal(Vahadane(min_tissue=0.0)(blank), blank)


def test_sparse_nmf_collapsed_image_is_nan_and_spares_the_batch():
    gen = torch.Generator().manual_seed(0)
    w_true = torch.tensor([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    h = torch.rand(2, 1000, generator=gen)
    v = (w_true / w_true.norm(dim=0) @ h)[None].expand(2, 3, 1000)
    w0 = torch.tensor([[0.8, 0.3], [0.5, 0.9], [0.3, 0.3]])[None].repeat(2, 1, 1)
    w0[1, :, 1] = w0[1, :, 0]  # both stain vectors one colour: a singular 2x2 system
    w = sparse_nmf(v, w0)
    assert torch.isnan(w[1]).all()
    assert torch.equal(w[0], sparse_nmf(v[:1], w0[:1])[0])
