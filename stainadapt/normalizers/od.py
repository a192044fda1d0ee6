"""Optical-density maths shared by the stain normalisers: pure, batched torch functions.

Conventions (see ``docs/normalizers.md``):

* optical density is natural-log: ``OD = -ln((I + 1) / Io)`` with ``I`` in 0..255; the
  ``+ 1`` keeps black pixels finite. (The Macenko paper uses log10; with ln every OD is
  2.303x larger, so the usual ``beta = 0.15`` threshold is *looser* than the paper's:
  it corresponds to 0.065 in log10 units.)
* a pixel is *tissue* when every channel has ``OD >= beta``;
* percentiles interpolate linearly between order statistics (``numpy.percentile``'s
  default), computed per image on masked values through one batched sort.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "intensity_to_log",
    "masked_quantile",
    "od_from_intensity",
    "sample_pixels",
    "tissue_mask",
]


def intensity_to_log(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``ln(I + 1)`` of intensities ``I`` in 0..255 (any shape), in ``dtype``."""
    return torch.log1p(x.to(dtype))


def od_from_intensity(x: Tensor, io: float, dtype: torch.dtype) -> Tensor:
    """Optical density ``-ln((I + 1) / Io)`` of intensities in 0..255, in ``dtype``."""
    return math.log(io) - intensity_to_log(x, dtype)


def tissue_mask(od: Tensor, beta: float) -> Tensor:
    """``(B, 3, N)`` OD -> ``(B, N)`` bool: every channel at least ``beta``."""
    return (od >= beta).all(dim=1)


def sample_pixels(flat: Tensor, max_samples: int, seed: int) -> Tensor:
    """A bounded, seeded subsample of pixel columns: ``(B, 3, N)`` -> ``(B, 3, K)``.

    All pixels are kept when ``N <= max_samples`` (so small images give exact results);
    otherwise ``max_samples`` positions are drawn uniformly (with replacement, from a
    CPU generator seeded with ``seed``, so the result does not depend on the device) and
    the same positions are used for every image of the batch.
    """
    n = flat.shape[-1]
    if n <= max_samples:
        return flat
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(n, (max_samples,), generator=gen)
    idx, _ = idx.sort()  # memory order: friendlier gathers
    return flat.index_select(-1, idx.to(flat.device))


def masked_quantile(values: Tensor, mask: Tensor | None, qs: Sequence[float]) -> Tensor:
    """Per-row quantiles of ``values`` ``(B, N)`` over ``mask`` ``(B, N)`` (None: all).

    Linear interpolation between order statistics, each row with its own count of
    valid entries (one batched sort, no Python loop over rows). Rows without a valid
    entry get 0. Returns ``(B, len(qs))``.
    """
    if mask is None:
        s, _ = values.sort(dim=1)
        n = torch.full((values.shape[0],), values.shape[1], device=values.device)
    else:
        s, _ = values.masked_fill(~mask, float("inf")).sort(dim=1)
        n = mask.sum(dim=1)
    q = torch.as_tensor(list(qs), dtype=values.dtype, device=values.device)
    last = (n - 1).clamp(min=0)
    pos = q[None, :] * last[:, None].to(values.dtype)  # (B, Q)
    lo = pos.floor().long().clamp(min=0)
    hi = torch.minimum(lo + 1, last[:, None])
    frac = pos - lo.to(values.dtype)
    a = s.gather(1, lo)
    b = s.gather(1, hi)
    out = a + (b - a) * frac
    return torch.where((n > 0)[:, None], out, torch.zeros_like(out))
