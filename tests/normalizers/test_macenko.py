"""Macenko: parity with torchstain, conventions, edge cases, dtype and chunking."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from stainadapt import create
from stainadapt.errors import InputError
from stainadapt.normalizers import Macenko, TissueWarning
from stainadapt.normalizers.od import masked_quantile


def test_parity_with_torchstain(ihc_t, ref_t):
    torchstain = pytest.importorskip("torchstain")
    peer = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    peer.fit(ref_t)
    expected, _, _ = peer.normalize(ihc_t, stains=False)  # (H, W, 3) int
    ours = Macenko().fit(ref_t)
    torch.testing.assert_close(ours.stain_matrix, peer.HERef.float(), atol=2e-3, rtol=0)
    out = ours(ihc_t).permute(1, 2, 0).int()
    mad = (out - expected.int()).abs().float().mean().item()
    assert mad <= 2.0, f"mean absolute difference {mad:.3f} grey levels"


def test_create_from_registry_with_options():
    norm = create("normalizers", "macenko:alpha=2,beta=0.2")
    assert isinstance(norm, Macenko) and norm.alpha == 2 and norm.beta == 0.2


def test_default_reference_before_fit(ihc_t):
    out = Macenko()(ihc_t)
    assert out.shape == ihc_t.shape and out.dtype == torch.uint8


def test_stain_order_stable_under_permutation(ihc_t):
    exact = Macenko(max_samples=2**18).fit(ihc_t).stain_matrix.clone()  # every pixel
    sampled = Macenko().fit(ihc_t).stain_matrix.clone()  # seeded subsample
    flat = ihc_t.reshape(3, -1)
    for seed in range(3):
        perm = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed))
        shuffled = flat[:, perm].reshape(ihc_t.shape)
        # with every pixel the estimate cannot depend on their order
        b = Macenko(max_samples=2**18).fit(shuffled).stain_matrix
        torch.testing.assert_close(exact, b, atol=1e-4, rtol=0)
        # a subsample sees other pixels, but the order and the vectors hold
        c = Macenko().fit(shuffled).stain_matrix
        torch.testing.assert_close(sampled, c, atol=0.02, rtol=0)
        assert c[0, 0] > c[0, 1]
    # hematoxylin (larger red OD) first
    assert exact[0, 0] > exact[0, 1]


def test_flip_and_rotation_give_same_stains(ihc_t):
    a = Macenko(max_samples=2**18).fit(ihc_t).stain_matrix
    b = Macenko(max_samples=2**18).fit(torch.rot90(ihc_t, 2, dims=(1, 2))).stain_matrix
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_blank_white_tile_passes_through(ihc_t):
    norm = Macenko().fit(ihc_t)
    blank = torch.full((3, 64, 64), 255, dtype=torch.uint8)
    with pytest.warns(TissueWarning, match="too little tissue"):
        out = norm(blank)
    assert torch.equal(out, blank)


def test_torchstain_empty_tile_crash_case_handled(ihc_t):
    """torchstain: 'kthvalue(): Expected reduction dim 0 to have non-zero size'."""
    blank = torch.full((3, 32, 32), 250, dtype=torch.uint8)
    torchstain = pytest.importorskip("torchstain")
    peer = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    with pytest.raises((RuntimeError, IndexError)):
        peer.normalize(blank, stains=False)
    with pytest.warns(TissueWarning):
        out = Macenko().fit(ihc_t)(blank)
    assert torch.equal(out, blank)


@pytest.mark.parametrize("colour", [(180, 90, 160), (0, 0, 0)])
def test_single_colour_tile(ihc_t, colour):
    tile = torch.tensor(colour, dtype=torch.uint8)[:, None, None].expand(3, 48, 48).contiguous()
    with pytest.warns(TissueWarning):
        out = Macenko().fit(ihc_t)(tile)
    assert torch.equal(out, tile)


def test_reference_without_tissue_is_an_input_error():
    with pytest.raises(InputError, match="too little tissue"):
        Macenko().fit(np.full((32, 32, 3), 255, np.uint8))


def test_mixed_batch_no_nan_and_only_bad_tiles_passed_through(ihc_t):
    norm = Macenko().fit(ihc_t)
    tiles = ihc_t[:, :128, :128]
    blank = torch.full_like(tiles, 255)
    batch = torch.stack([tiles, blank, ihc_t[:, 128:256, 128:256]])
    with pytest.warns(TissueWarning, match="1 of 3"):
        out = norm(batch)
    assert torch.equal(out[1], blank)
    assert torch.equal(out[0], norm(tiles))
    with pytest.warns(TissueWarning):
        fout = norm(batch.float() / 255)
    assert torch.isfinite(fout).all() and fout.dtype == torch.float32


def test_batch_equals_loop(ihc_t):
    norm = Macenko().fit(ihc_t)
    tiles = (
        ihc_t.unfold(1, 128, 128)
        .unfold(2, 128, 128)
        .permute(1, 2, 0, 3, 4)
        .reshape(-1, 3, 128, 128)
    )
    out = norm(tiles)
    loop = torch.stack([norm(t) for t in tiles])
    assert torch.equal(out, loop)


def test_float64_matches_float32(ihc_t, ref_t):
    n32 = Macenko().fit(ref_t)
    n64 = Macenko().double().fit(ref_t)
    assert n64.stain_matrix.dtype == torch.float64
    torch.testing.assert_close(n32.stain_matrix.double(), n64.stain_matrix, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        n32.max_concentrations.double(), n64.max_concentrations, atol=1e-3, rtol=1e-4
    )
    diff = (n32(ihc_t).int() - n64(ihc_t).int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.01


def test_float_reference_equals_uint8(ihc, ref_t):
    a = Macenko().fit(ihc)
    b = Macenko().fit(ihc.astype(np.float64) / 255.0)
    torch.testing.assert_close(a.stain_matrix, b.stain_matrix, atol=1e-4, rtol=0)


def test_float_input_float_output(ihc_t, ref_t):
    norm = Macenko().fit(ref_t)
    out = norm(ihc_t.double() / 255)
    assert out.dtype == torch.float64 and out.shape == ihc_t.shape
    assert (out * 255 - norm(ihc_t).double()).abs().max() <= 0.51


def test_chunking_does_not_change_output(ihc_t, ref_t):
    full = Macenko().fit(ref_t)(ihc_t)
    chunked = Macenko(chunk_pixels=1000).fit(ref_t)(ihc_t)
    assert torch.equal(full, chunked)


def test_subsample_is_seeded_and_close(ihc_t, ref_t):
    exact = Macenko(max_samples=2**18).fit(ref_t).stain_matrix  # every pixel
    a = Macenko(max_samples=8192).fit(ref_t).stain_matrix
    b = Macenko(max_samples=8192).fit(ref_t).stain_matrix
    assert torch.equal(a, b)
    torch.testing.assert_close(a, exact, atol=0.03, rtol=0)


def test_state_dict_roundtrip_and_device(ihc_t, ref_t, device):
    norm = Macenko().fit(ref_t)
    state = norm.state_dict()
    assert set(state) == {"stain_matrix", "max_concentrations"}
    other = Macenko()
    other.load_state_dict(state)
    other = other.to(device)
    assert other.stain_matrix.device.type == device.type
    out = other(ihc_t.to(device))
    assert out.device.type == device.type
    assert torch.equal(out.cpu(), norm(ihc_t))


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(4, 8, 8, dtype=torch.uint8),
        torch.zeros(8, 8, 3, dtype=torch.uint8),
        torch.zeros(3, 8, 8, dtype=torch.int32),
        torch.zeros(3, 0, 8, dtype=torch.uint8),
    ],
)
def test_bad_input_is_input_error(bad):
    with pytest.raises(InputError):
        Macenko()(bad)


def test_masked_quantile_matches_numpy():
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(4, 50))
    mask = rng.random((4, 50)) > 0.4
    mask[3] = False
    got = masked_quantile(torch.tensor(vals), torch.tensor(mask), (0.01, 0.5, 0.99)).numpy()
    for i in range(3):
        np.testing.assert_allclose(got[i], np.percentile(vals[i][mask[i]], [1, 50, 99]))
    assert (got[3] == 0).all()


def test_no_warning_on_good_tiles(ihc_t):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Macenko().fit(ihc_t)(ihc_t)


def test_transform_runs_in_bounded_chunks(ihc_t, ref_t):
    norm = Macenko(chunk_pixels=4096).fit(ref_t)
    seen = []
    transform = norm._transform

    def spy(x, params):
        seen.append(x.shape[0] * x.shape[2])
        return transform(x, params)

    norm._transform = spy
    batch = torch.stack([ihc_t, ihc_t.flip(-1)])
    out = norm(batch)
    assert max(seen) <= 4096 and len(seen) == 512 * 512 // 2048
    del norm._transform
    assert torch.equal(out, norm(batch))


def test_odd_inputs(ihc, ihc_t):
    norm = Macenko().fit(ihc_t)
    # a channels-last view (as from numpy) gives the same result as a contiguous tensor
    view = torch.from_numpy(ihc).permute(2, 0, 1)
    assert torch.equal(norm(view), norm(ihc_t))
    # out-of-range floats are clamped to 0..1, never NaN
    wild = ihc_t.float() / 255 * 1.4 - 0.2
    out = norm(wild)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # half precision in, half precision out
    assert norm(ihc_t.half() / 255).dtype == torch.float16
    # an empty batch is returned as is
    assert norm(torch.zeros(0, 3, 8, 8, dtype=torch.uint8)).shape == (0, 3, 8, 8)
