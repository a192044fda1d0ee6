"""Optical-density maths shared by the stain normalisers: pure, batched torch functions.

Conventions (see ``docs/normalizers.md``):

* optical density is natural-log: ``OD = -ln((I + 1) / Io)`` with ``I`` in 0..255; the
  ``+ 1`` keeps black pixels finite. (The Macenko paper uses log10; with ln every OD is
  2.303x larger, so the usual ``beta = 0.15`` threshold is *looser* than the paper's:
  it corresponds to 0.065 in log10 units.)
* a pixel is *tissue* when every channel has ``OD >= beta``;
* percentiles interpolate linearly between order statistics (``numpy.percentile``'s
  default), computed per image on masked values, batched over images (a partial top-k
  from the nearer end of each row).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "exp_",
    "log_",
    "intensity_to_log",
    "masked_quantile",
    "od_from_intensity",
    "plus_one",
    "sample_pixels",
    "tissue_from_intensity",
    "tissue_mask",
]


def intensity_to_log(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``ln(I + 1)`` of intensities ``I`` in 0..255 (any shape, uint8 or float), in ``dtype``.

    Written as add + log: on CPU ``torch.log`` is vectorised and several times faster
    than ``torch.log1p`` (``I + 1 >= 1``, so nothing is lost).
    """
    return log_(plus_one(x, dtype))


def _numpy_ok(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _in_place(t: Tensor, ufunc: np.ufunc, fallback: Callable[[Tensor], Tensor]) -> Tensor:
    """``ufunc`` on ``t``'s memory through a numpy view on CPU, else ``fallback(t)``."""
    if _numpy_ok(t):
        a = t.numpy()
        ufunc(a, out=a)
        return t
    return fallback(t)


def log_(t: Tensor) -> Tensor:
    """In-place natural log. On CPU numpy's vectorised log is ~3x faster than torch's."""
    return _in_place(t, np.log, Tensor.log_)


def exp_(t: Tensor) -> Tensor:
    """In-place exp (numpy on CPU, as :func:`log_`)."""
    return _in_place(t, np.exp, Tensor.exp_)


def plus_one(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``I + 1`` as a new ``dtype`` tensor.

    On CPU, uint8 -> float conversion in torch is a scalar loop; numpy's is vectorised
    and about 5x faster, so CPU uint8 input goes through a zero-copy numpy view.
    """
    floats = (torch.float32, torch.float64)
    if x.dtype == torch.uint8 and x.device.type == "cpu" and dtype in floats:
        one = np.float32(1) if dtype == torch.float32 else np.float64(1)
        return torch.from_numpy(np.add(x.numpy(), one, dtype=one.dtype))
    return x.to(dtype, copy=True).add_(1.0)


def od_from_intensity(
    x: Tensor,
    io: float,
    dtype: torch.dtype,
    log1: Callable[[Tensor, torch.dtype], Tensor] = intensity_to_log,
) -> Tensor:
    """Optical density ``-ln((I + 1) / Io)`` of intensities in 0..255, in ``dtype``.

    ``log1(x, dtype)`` computes ``ln(I + 1)`` as a new tensor (the trace-friendly
    normalisers pass one without numpy).
    """
    return log1(x, dtype).neg_().add_(math.log(io))


def tissue_mask(od: Tensor, beta: float) -> Tensor:
    """``(B, 3, N)`` OD -> ``(B, N)`` bool: every channel at least ``beta``."""
    return (od >= beta).all(dim=1)


def tissue_from_intensity(x: Tensor, io: float, beta: float) -> Tensor:
    """:func:`tissue_mask` computed on intensities ``(B, 3, N)`` (uint8 or float).

    ``OD >= beta`` in every channel <=> ``max(I) + 1 <= Io * exp(-beta)``; on uint8 this
    is one cheap byte-wise max instead of three float comparisons.
    """
    limit = io * math.exp(-beta) - 1.0
    top = x.amax(dim=1)
    if x.dtype == torch.uint8:
        return top <= math.floor(limit)
    return top <= limit


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
    # Stratified: one uniform draw in each of max_samples equal strides (sorted for free,
    # so the gather walks memory in order).
    gen = torch.Generator().manual_seed(int(seed))
    stride = n / max_samples
    offsets = torch.rand(max_samples, generator=gen, dtype=torch.float64)
    idx = ((torch.arange(max_samples, dtype=torch.float64) + offsets) * stride).long()
    idx = idx.clamp_(max=n - 1).to(flat.device)
    # gather with an expanded index is several times faster than index_select here
    return torch.gather(flat, -1, idx.expand(*flat.shape[:-1], max_samples))


def masked_quantile(values: Tensor, mask: Tensor | None, qs: Sequence[float]) -> Tensor:
    """Per-row quantiles of ``values`` ``(B, N)`` over ``mask`` ``(B, N)`` (None: all).

    Linear interpolation between order statistics (``numpy.percentile``'s default),
    each row with its own count of valid entries; batched over rows (a partial top-k
    from the nearer end, or one sort when the quantile is central). Rows without a
    valid entry get 0. Returns ``(B, len(qs))``.
    """
    b, total = values.shape
    n = torch.full((b,), total, device=values.device) if mask is None else mask.sum(dim=1)
    last = (n - 1).clamp(min=0)
    outs = []
    for q in qs:
        pos = float(q) * last.to(values.dtype)  # (B,)
        lo = pos.floor().long().clamp(min=0)
        hi = torch.minimum(lo + 1, last)
        frac = pos - lo.to(values.dtype)
        # Only the order statistics near the quantile are needed: a partial top-k from
        # the nearer end is much cheaper than a full sort for the 1st / 99th percentile.
        if q <= 0.5:
            k = int(hi.max()) + 1
            v = values if mask is None else values.masked_fill(~mask, float("inf"))
            if k > total // 4:
                s, _ = v.sort(dim=1)
            else:
                s = v.topk(k, dim=1, largest=False, sorted=True).values
            a, c = s.gather(1, lo[:, None]), s.gather(1, hi[:, None])
        else:
            r_lo, r_hi = last - hi, last - lo  # ranks from the top
            k = int(r_hi.max()) + 1
            v = values if mask is None else values.masked_fill(~mask, float("-inf"))
            if k > total // 4:
                s, _ = v.sort(dim=1, descending=True)
            else:
                s = v.topk(k, dim=1, largest=True, sorted=True).values
            a, c = s.gather(1, r_hi[:, None]), s.gather(1, r_lo[:, None])
        outs.append(a + (c - a) * frac[:, None])
    out = torch.cat(outs, dim=1)
    return torch.where((n > 0)[:, None], out, torch.zeros_like(out))
