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

The maths is written once, as functions over an :class:`~stainadapt.normalizers.ops.Ops`
(:func:`macenko_statistics`, :func:`macenko_params`, :func:`macenko_transform`); the
eager :class:`Macenko` and its trace-friendly twin :class:`ExportableMacenko` wrap them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError
from .base import CoreNormalizer
from .exportable import ExportableCore
from .od import od_from_intensity
from .ops import EAGER, Ops, PixelSample

__all__ = [
    "DEFAULT_MAX_CONCENTRATIONS",
    "DEFAULT_STAIN_MATRIX",
    "ExportableMacenko",
    "Macenko",
    "MacenkoCore",
    "concentration_statistics",
    "macenko_params",
    "macenko_stains",
    "macenko_statistics",
    "macenko_transform",
]

#: The H&E reference of the original implementations (natural-log OD; columns H, E).
DEFAULT_STAIN_MATRIX = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
DEFAULT_MAX_CONCENTRATIONS = (1.9705, 1.0308)

#: Stain vectors closer than this angle are one colour: the estimate is degenerate.
MIN_STAIN_ANGLE_DEG = 2.0


def _orient(v: Tensor) -> Tensor:
    """Flip each vector ``(B, 3)`` into the positive octant's side (non-negative sum)."""
    return torch.where(v.sum(dim=-1, keepdim=True) < 0, -v, v)


def macenko_stains(
    od: Tensor, tissue: Tensor, alpha: float = 1.0, ops: Ops = EAGER
) -> tuple[Tensor, Tensor]:
    """Macenko stain vectors of each image.

    Args:
        od: ``(B, 3, K)`` optical densities.
        tissue: ``(B, K)`` bool, the pixels to estimate from.
        alpha: percentile (0..50) of the angle distribution taken as the extreme stains.
        ops: the eigensolver and the percentiles (eager or trace-friendly).

    Returns:
        ``(stains, ok)``: ``(B, 3, 2)`` unit stain vectors (columns; hematoxylin, i.e. the
        larger red OD, first) and ``(B,)`` bool, False where fewer than 2 tissue pixels
        or the two vectors are (nearly) parallel. Rows that are not ok hold the default
        H&E matrix.
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
    # Rows without data get a harmless matrix so the eigensolver never sees NaN.
    fallback = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=od.dtype, device=od.device))
    cov = torch.where(enough[:, None, None], cov, fallback)
    _, vecs = ops.eigh(cov)  # ascending eigenvalues
    # Principal direction into the positive octant, so every tissue pixel projects onto
    # it positively and the angles live in (-pi/2, pi/2): no wrap at +-pi. The sign of
    # the second direction only swaps the two extremes, which are ordered below.
    e1 = _orient(vecs[:, :, 2])
    e2 = _orient(vecs[:, :, 1])
    proj = torch.stack((e1, e2), dim=1) @ od  # (B, 2, K)
    phi = torch.atan2(proj[:, 1], proj[:, 0])
    q = ops.quantile(phi, tissue, (alpha / 100.0, 1.0 - alpha / 100.0))
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


def concentration_statistics(
    stains: Tensor,
    od: Tensor,
    ok: Tensor,
    valid: Tensor | None,
    percentile: float,
    ops: Ops = EAGER,
    nonnegative: bool = False,
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-image statistics of a stain-vector normaliser (Macenko, Vahadane).

    Concentrations ``pinv(stains) @ od`` of every sampled pixel (clamped at 0 with
    ``nonnegative``) and their ``percentile`` as the maximum concentration.

    Args:
        stains: ``(B, 3, 2)`` stain vectors; od: ``(B, 3, K)``; ok: ``(B,)`` bool so far;
        valid: ``(K,)`` bool columns that hold pixels, or None for all.

    Returns:
        ``(stats, ok)``: ``stain_matrix`` ``(B, 3, 2)``, ``max_concentrations`` ``(B, 2)``
        (1 where not ok) and ``pinv`` ``(B, 2, 3)``; ``ok`` also False where a maximum
        concentration is zero.
    """
    pinv = ops.pinv(stains)  # (B, 2, 3)
    conc = pinv @ od  # (B, 2, K), every sampled pixel (as the original method)
    if nonnegative:
        conc = conc.clamp(min=0)
    b, _, k = conc.shape
    mask = None if valid is None else valid[None].expand(b * 2, k)
    maxc = ops.quantile(conc.reshape(b * 2, k), mask, (percentile / 100.0,)).reshape(b, 2)
    ok = ok & (maxc > 1e-6).all(dim=1)
    maxc = torch.where(ok[:, None], maxc, torch.ones_like(maxc))
    return {"stain_matrix": stains, "max_concentrations": maxc, "pinv": pinv}, ok


def macenko_statistics(
    sample: PixelSample, io: float, alpha: float, percentile: float, ops: Ops = EAGER
) -> tuple[dict[str, Tensor], Tensor]:
    """Macenko's per-image statistics (see :func:`concentration_statistics`) and ``ok``."""
    od = od_from_intensity(sample.x, io, sample.dtype, ops.log1)
    stains, ok = macenko_stains(od, sample.tissue, alpha, ops)
    ok = ok & sample.enough
    return concentration_statistics(stains, od, ok, sample.valid, percentile, ops)


def macenko_params(
    stats: dict[str, Tensor], ref_stains: Tensor, ref_max: Tensor, io: float
) -> tuple[Tensor, Tensor]:
    """``(M (B, 3, 3), c (B, 3, 1))`` of ``out = exp(c + M @ ln(I + 1))``.

    ``M = ref_stains @ diag(ref_max / max_concentrations) @ pinv`` and
    ``c = ln(Io) (1 - M 1)``; ``ref_stains`` ``(3, 2)``, ``ref_max`` ``(2,)`` in the
    statistics' dtype and device.
    """
    scale = ref_max / stats["max_concentrations"]  # (B, 2)
    m = ref_stains @ (scale[:, :, None] * stats["pinv"])  # (B, 3, 3)
    c = math.log(io) * (1.0 - m.sum(dim=2, keepdim=True))  # (B, 3, 1)
    return m, c


def macenko_transform(x: Tensor, params: tuple[Tensor, ...], ops: Ops = EAGER) -> Tensor:
    """Intensities ``(B, 3, S)`` (0..255) -> normalised intensities ``(B, 3, S)`` (float)."""
    m, c = params
    return ops.exp_(torch.bmm(m, ops.log1(x, m.dtype)).add_(c))


class MacenkoCore:
    """Macenko's functional core over its options, for :class:`Macenko` and its twin."""

    io: float
    alpha: float
    percentile: float
    options = ("alpha", "percentile")
    reference_buffers = ("stain_matrix", "max_concentrations")

    def core_statistics(self, sample: PixelSample, ops: Ops) -> tuple[dict[str, Tensor], Tensor]:
        return macenko_statistics(sample, self.io, self.alpha, self.percentile, ops)

    def core_params(self, stats: dict[str, Tensor], *reference: Tensor) -> tuple[Tensor, ...]:
        return macenko_params(stats, *reference, self.io)

    def core_transform(self, x: Tensor, params: tuple[Tensor, ...], ops: Ops) -> Tensor:
        return macenko_transform(x, params, ops)


class ExportableMacenko(MacenkoCore, ExportableCore):
    """:class:`Macenko`'s trace-friendly twin (see :mod:`~stainadapt.normalizers.exportable`)."""


class Macenko(MacenkoCore, CoreNormalizer):
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

    twin = ExportableMacenko

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
