"""Macenko stain normalisation (Macenko et al., ISBI 2009), batched torch on any device.

Example::

    norm = stainadapt.create("normalizers", "macenko").fit(reference)  # (3,H,W) uint8
    out = norm(tiles)                                                   # (B,3,H,W) uint8

Per image (all batched: one ``eigh`` over ``(B, 3, 3)`` covariances, one top-k per
percentile over all rows): OD of a pixel subsample; tissue pixels (every OD >= beta);
the plane of the two largest principal directions of their OD; the angle of each pixel
in that plane; the stain vectors at the ``alpha`` and ``100 - alpha`` percentiles of
the angle; concentrations by least squares (pseudo-inverse); the 99th percentile of
each concentration. The image is rebuilt with the reference stain vectors and
concentrations rescaled to the reference's 99th percentiles.

Because OD is linear in ``ln(I + 1)``, the whole transform of one image is a 3x3 matrix
``M`` and an offset ``c``: ``out = exp(c + M @ ln(I + 1))``, applied in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import InputError
from .base import StainNormalizer
from .od import exp_, intensity_to_log, masked_quantile, od_from_intensity, tissue_from_intensity

__all__ = [
    "DEFAULT_MAX_CONCENTRATIONS",
    "DEFAULT_STAIN_MATRIX",
    "Macenko",
    "macenko_stains",
    "stains_from_plane",
]

#: The H&E reference of the original implementations (natural-log OD; columns H, E).
DEFAULT_STAIN_MATRIX = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
DEFAULT_MAX_CONCENTRATIONS = (1.9705, 1.0308)

#: Stain vectors closer than this angle are one colour: the estimate is degenerate.
MIN_STAIN_ANGLE_DEG = 2.0


def _orient(v: Tensor) -> Tensor:
    """Flip each vector ``(B, 3)`` into the positive octant's side (non-negative sum)."""
    return torch.where(v.sum(dim=-1, keepdim=True) < 0, -v, v)


def stains_from_plane(
    e1: Tensor,
    e2: Tensor,
    od: Tensor,
    tissue: Tensor,
    enough: Tensor,
    alpha: float,
    quantile: Callable[[Tensor, Tensor, tuple[float, ...]], Tensor] = masked_quantile,
) -> tuple[Tensor, Tensor]:
    """Macenko's H and E vectors from the plane of the two principal OD directions.

    Shared by :func:`macenko_stains` and the trace-friendly copy in
    :mod:`~stainadapt.normalizers.exportable`, so the eager and the exported normaliser
    compute the same stains; each passes its own ``quantile`` (the exported one must
    avoid data-dependent Python branches). Everything here is branch-free tensor maths.

    Args:
        e1, e2: ``(B, 3)`` the largest and second-largest principal directions (any sign).
        od: ``(B, 3, K)`` optical densities.
        tissue: ``(B, K)`` bool, the pixels to estimate from.
        enough: ``(B,)`` bool, False where the covariance had too few pixels.
        alpha: percentile (0..50) of the angle distribution taken as the extreme stains.
        quantile: ``(values (R, K), mask (R, K), qs) -> (R, len(qs))`` per-row quantiles.

    Returns:
        ``(stains, ok)`` as :func:`macenko_stains`.
    """
    # Principal direction into the positive octant, so every tissue pixel projects onto
    # it positively and the angles live in (-pi/2, pi/2): no wrap at +-pi.
    e1 = _orient(e1)
    e2 = _orient(e2)
    proj = torch.stack((e1, e2), dim=1) @ od  # (B, 2, K)
    phi = torch.atan2(proj[:, 1], proj[:, 0])
    q = quantile(phi, tissue, (alpha / 100.0, 1.0 - alpha / 100.0))
    lo, hi = q[:, 0:1], q[:, 1:2]
    v_lo = torch.cos(lo) * e1 + torch.sin(lo) * e2
    v_hi = torch.cos(hi) * e1 + torch.sin(hi) * e2
    h_first = (v_lo[:, 0] >= v_hi[:, 0])[:, None]
    h = torch.where(h_first, v_lo, v_hi)
    e = torch.where(h_first, v_hi, v_lo)
    stains = torch.stack((h, e), dim=2)  # (B, 3, 2)
    cos = (h * e).sum(dim=1).abs()
    ok = enough & (cos < math.cos(math.radians(MIN_STAIN_ANGLE_DEG)))
    default = torch.tensor(DEFAULT_STAIN_MATRIX, dtype=od.dtype, device=od.device)
    stains = torch.where(ok[:, None, None], stains, default.expand(od.shape[0], 3, 2))
    return stains, ok


def macenko_stains(od: Tensor, tissue: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """Macenko stain vectors of each image.

    Args:
        od: ``(B, 3, K)`` optical densities.
        tissue: ``(B, K)`` bool, the pixels to estimate from.
        alpha: percentile (0..50) of the angle distribution taken as the extreme stains.

    Returns:
        ``(stains, ok)``: ``(B, 3, 2)`` unit stain vectors (columns; hematoxylin, i.e. the
        larger red OD, first) and ``(B,)`` bool, False where fewer than 2 tissue pixels
        or the two vectors are (nearly) parallel. Rows that are not ok hold finite values.
    """
    w = tissue.to(od.dtype)
    n = w.sum(dim=1)
    # Covariance from the first two moments: one masked copy and one (3 x K) @ (K x 3)
    # product per image instead of centring the whole array.
    odm = od * w[:, None]
    mean = odm.sum(dim=2) / n.clamp(min=1)[:, None]
    second = odm @ od.transpose(1, 2)  # (B, 3, 3)
    cov = (second - n[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (n - 1).clamp(min=1)[
        :, None, None
    ]
    enough = n >= 2
    # Rows without data get a harmless matrix so eigh never sees NaN.
    fallback = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=od.dtype, device=od.device))
    cov = torch.where(enough[:, None, None], cov, fallback)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return stains_from_plane(vecs[:, :, 2], vecs[:, :, 1], od, tissue, enough, alpha)


class Macenko(StainNormalizer):
    """Macenko normaliser; an ``nn.Module`` whose buffers are the fitted reference.

    Args:
        io: transmitted light intensity (240).
        alpha: angle percentile of the extreme stain vectors (1).
        beta: tissue OD threshold, natural log (0.15; looser than 0.15 in log10).
        percentile: concentration percentile used as the maximum (99).
        max_samples, min_tissue, seed, chunk_pixels: see :class:`StainNormalizer`.

    Buffers: ``stain_matrix`` ``(3, 2)`` (columns H, E; natural-log OD) and
    ``max_concentrations`` ``(2,)``; before :meth:`fit` they hold the literature's
    standard H&E reference.
    """

    def __init__(
        self,
        io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        percentile: float = 99.0,
        max_samples: int = 2**14,
        min_tissue: float = 0.01,
        seed: int = 0,
        chunk_pixels: int = 2**22,
    ) -> None:
        super().__init__(io, beta, max_samples, min_tissue, seed, chunk_pixels)
        if not 0 <= alpha < 50:
            raise InputError(f"alpha must be in [0, 50); got {alpha}")
        if not 0 < percentile <= 100:
            raise InputError(f"percentile must be in (0, 100]; got {percentile}")
        self.alpha = float(alpha)
        self.percentile = float(percentile)
        self.register_buffer("stain_matrix", torch.tensor(DEFAULT_STAIN_MATRIX))
        self.register_buffer("max_concentrations", torch.tensor(DEFAULT_MAX_CONCENTRATIONS))

    def _statistics(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        tissue = tissue_from_intensity(x, self.io, self.beta)
        od = od_from_intensity(x, self.io, self.compute_dtype)
        stains, ok = macenko_stains(od, tissue, self.alpha)
        ok = ok & self._enough_tissue(tissue)
        pinv = torch.linalg.pinv(stains)  # (B, 2, 3)
        conc = pinv @ od  # (B, 2, K), every sampled pixel (as the original method)
        b, _, k = conc.shape
        maxc = masked_quantile(conc.reshape(b * 2, k), None, (self.percentile / 100.0,))
        maxc = maxc.reshape(b, 2)
        ok = ok & (maxc > 1e-6).all(dim=1)
        maxc = torch.where(ok[:, None], maxc, torch.ones_like(maxc))
        return {"stain_matrix": stains, "max_concentrations": maxc, "pinv": pinv}, ok

    def _set_reference(self, stats: dict[str, Tensor]) -> None:
        self.stain_matrix.copy_(stats["stain_matrix"][0])
        self.max_concentrations.copy_(stats["max_concentrations"][0])

    def _params(self, stats: dict[str, Tensor]) -> tuple[Tensor, ...]:
        dtype = stats["pinv"].dtype
        ref = self.stain_matrix.to(stats["pinv"].device, dtype)
        scale = self.max_concentrations.to(ref) / stats["max_concentrations"]  # (B, 2)
        m = ref @ (scale[:, :, None] * stats["pinv"])  # (B, 3, 3)
        c = math.log(self.io) * (1.0 - m.sum(dim=2, keepdim=True))  # (B, 3, 1)
        return m, c

    def _transform(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        m, c = params
        return exp_(torch.bmm(m, intensity_to_log(x, m.dtype)).add_(c))
