"""Glomerulus centres and foreground-aware crop placement."""

import numpy as np
import pytest

from stainadapt.data.sampling import crop_origin, glomerulus_centres


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=np.uint8)
    for cy, cx in centres:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 255
    return mask


def test_centres_of_separate_regions():
    mask = _discs((200, 300), [(50, 60), (150, 220)], 12)
    got = sorted(map(tuple, glomerulus_centres(mask)))
    assert got == [(50, 60), (150, 220)]


def test_empty_mask_and_min_pixels():
    assert glomerulus_centres(np.zeros((10, 10))).shape == (0, 2)
    mask = _discs((100, 100), [(20, 20)], 10)
    mask[80, 80] = 1  # a one-pixel speck
    assert len(glomerulus_centres(mask)) == 2
    assert [tuple(c) for c in glomerulus_centres(mask, min_pixels=5)] == [(20, 20)]


def test_crescent_centre_lies_on_the_region():
    mask = _discs((100, 100), [(50, 50)], 30) & ~_discs((100, 100), [(50, 60)], 28)
    (y, x), = glomerulus_centres(mask)
    assert mask[y, x]


def test_foreground_share_is_honoured():
    """Counted over many crops: the share of crops that contain a glomerulus."""
    shape, crop = (512, 512), 128
    mask = _discs(shape, [(60, 400)], 20)  # one small glomerulus in a corner
    centres = glomerulus_centres(mask)
    rng = np.random.default_rng(0)

    def hit_rate(share, n=4000):
        hits = 0
        for _ in range(n):
            y, x = crop_origin(rng, shape, crop, centres, share)
            hits += bool(mask[y + crop // 2, x + crop // 2]) or \
                bool(mask[y:y + crop, x:x + crop].any())
        return hits / n

    uniform = hit_rate(0.0)
    assert uniform < 0.15  # by chance only
    for share in (0.33, 0.5, 1.0):
        got = hit_rate(share)
        expected = share + (1 - share) * uniform
        assert abs(got - expected) < 0.04, (share, got, expected)


def test_origins_stay_inside_and_zero_share_draws_like_uniform():
    shape, crop = (300, 260), 256
    centres = np.array([[0, 0], [299, 259]])
    a = np.random.default_rng(5)
    for _ in range(200):
        y, x = crop_origin(a, shape, crop, centres, 1.0)
        assert 0 <= y <= shape[0] - crop and 0 <= x <= shape[1] - crop
    # share 0: exactly the draws of a plain uniform placement
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    got = [crop_origin(r1, shape, crop, centres, 0.0) for _ in range(20)]
    ref = [(int(r2.integers(0, 45)), int(r2.integers(0, 5))) for _ in range(20)]
    assert got == ref


def test_bad_share_is_refused():
    with pytest.raises(ValueError, match="foreground_share"):
        crop_origin(np.random.default_rng(0), (64, 64), 32, None, 1.5)
