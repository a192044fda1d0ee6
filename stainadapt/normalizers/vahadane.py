"""Vahadane stain normalisation (Vahadane et al., IEEE TMI 2016): sparse NMF in torch.

Per image (batched): tissue OD ``V`` ``(3, n)`` is factorised as ``W @ H`` with
``W >= 0`` (unit columns: the stain vectors) and ``H >= 0`` sparse (L1 weight ``lam``
on the concentrations), by alternating the exact non-negative lasso for ``H`` (closed
form with two stains) with a projected least-squares update of ``W``. ``W`` starts from
the Macenko estimate, so the result is deterministic and the order is stable
(hematoxylin first: the larger red OD). An image whose two stain vectors collapse onto
one colour during the NMF (a few scattered dark pixels on glass can do it: the 2x2
systems become singular) has a degenerate estimate and passes through unchanged, as
one with too little tissue does. Then, for the transform, concentrations are
non-negative least squares, approximated by clamping the pseudo-inverse solution at 0
(so no pixel can become brighter than ``Io`` in any channel: background stays
white-grey, never cyan), scaled by 99th percentiles as in Macenko, and rebuilt with the
reference stain vectors.

The maths is written once, as functions over an :class:`~stainadapt.normalizers.ops.Ops`
(:func:`vahadane_statistics`, :func:`vahadane_params`, :func:`vahadane_transform`); the
eager :class:`Vahadane` and its trace-friendly twin :class:`ExportableVahadane` wrap them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError
from .base import CoreNormalizer
from .exportable import ExportableCore
from .macenko import (
    DEFAULT_MAX_CONCENTRATIONS,
    DEFAULT_STAIN_MATRIX,
    concentration_statistics,
    macenko_stains,
)
from .od import od_from_intensity
from .ops import EAGER, Ops, PixelSample

__all__ = [
    "ExportableVahadane",
    "Vahadane",
    "VahadaneCore",
    "sparse_nmf",
    "vahadane_params",
    "vahadane_statistics",
    "vahadane_transform",
]

#: Two stain vectors whose squared sine (``1 - cos^2`` of their angle) falls below this
#: are one colour to working precision: the 2x2 lasso system is singular (float32) or
#: its solution is rounding noise. An image whose NMF gets there (about 0.06 degrees
#: apart; the final check already refuses under ~2 degrees) has a degenerate estimate.
MIN_STAIN_SIN2 = 1e-6


def collapsed_stains(g: Tensor) -> Tensor:
    """``(B, 2, 2)`` Gram matrices ``W^T W`` -> ``(B,)`` bool: the two columns are parallel.

    True where ``det(g) < MIN_STAIN_SIN2 * g00 * g11`` (squared sine of the angle below
    the limit) or ``g`` is not finite. A zero column (its vector was never set) is not
    parallel to anything: ``det = 0 = g00 * g11``, so it is not flagged here.
    """
    g00, g01, g11 = g[:, 0, 0], g[:, 0, 1], g[:, 1, 1]
    det = g00 * g11 - g01 * g01
    return ~(det >= MIN_STAIN_SIN2 * (g00 * g11))  # NaN compares False: flagged


def _lasso2(g: Tensor, wtv: Tensor, lam: float, ops: Ops) -> Tensor:
    """Exact non-negative lasso with two unknowns per pixel, batched.

    Minimises ``h^T G h / 2 - (W^T v - lam)^T h`` over ``h >= 0`` for every column: the
    unconstrained optimum when it is non-negative (KKT), else the better of the two
    one-stain optima. ``g`` ``(B, 2, 2)``, ``wtv`` ``(B, 2, n)`` -> ``(B, 2, n)``.
    """
    r = wtv - lam
    eye = torch.eye(2, dtype=g.dtype, device=g.device)
    both = ops.solve(g + 1e-8 * eye, r)
    g00 = g[:, 0, 0, None].clamp(min=1e-8)
    g11 = g[:, 1, 1, None].clamp(min=1e-8)
    a = (r[:, 0] / g00).clamp(min=0)
    b = (r[:, 1] / g11).clamp(min=0)
    use_a = (0.5 * g00 * a * a - r[:, 0] * a) <= (0.5 * g11 * b * b - r[:, 1] * b)
    zero = torch.zeros_like(a)
    single = torch.stack((torch.where(use_a, a, zero), torch.where(use_a, zero, b)), dim=1)
    return torch.where((both >= 0).all(dim=1, keepdim=True), both, single)


def sparse_nmf(
    v: Tensor, w0: Tensor, lam: float = 0.1, n_iter: int = 50, ops: Ops = EAGER
) -> Tensor:
    """Batched sparse NMF: ``min ||V - W H||^2 / 2 + lam |H|_1``, ``W, H >= 0``.

    Alternates the exact non-negative lasso for ``H`` (two stains: solvable in closed
    form per pixel) with least squares for ``W`` projected onto ``W >= 0`` and unit
    columns.

    Args:
        v: ``(B, 3, n)`` OD; columns that should not count (background) are zero.
        w0: ``(B, 3, 2)`` initial stain vectors.
        lam: L1 weight on the concentrations.
        n_iter: alternations.
        ops: the 2x2 solvers (eager or trace-friendly).

    Returns:
        ``(B, 3, 2)`` non-negative unit-norm stain vectors; all NaN for an image whose
        estimate degenerated (the two vectors collapsed onto one colour, see
        :func:`collapsed_stains`, or a 2x2 solve was singular), so that one image
        cannot fail the batch's solves.
    """
    w = w0.clamp(min=0)
    w = w / w.norm(dim=1, keepdim=True).clamp(min=1e-8)
    live = (v.abs().sum(dim=1, keepdim=True) > 0).to(v.dtype)  # (B, 1, n)
    eye = torch.eye(2, dtype=v.dtype, device=v.device)
    bad = torch.zeros_like(w[:, 0, 0], dtype=torch.bool)
    for _ in range(n_iter):
        g = w.transpose(1, 2) @ w
        bad = bad | collapsed_stains(g)
        g = torch.where(bad[:, None, None], eye, g)  # degenerate images: a regular system
        h = _lasso2(g, w.transpose(1, 2) @ v, lam, ops) * live
        hht = h @ h.transpose(1, 2) + 1e-6 * eye
        hht = torch.where(bad[:, None, None], eye, hht)
        wt, failed = ops.solve_checked(hht, h @ v.transpose(1, 2))  # (B, 2, 3)
        bad = bad | failed | ~torch.isfinite(wt).all(dim=2).all(dim=1)
        w_new = wt.transpose(1, 2).clamp(min=0)
        norm = w_new.norm(dim=1, keepdim=True)
        w = torch.where(norm > 1e-6, w_new / norm.clamp(min=1e-8), w)
    return torch.where(bad[:, None, None], torch.full_like(w, float("nan")), w)


def vahadane_statistics(
    sample: PixelSample,
    io: float,
    percentile: float,
    lam: float,
    n_iter: int,
    nmf_samples: int,
    ops: Ops = EAGER,
) -> tuple[dict[str, Tensor], Tensor]:
    """Vahadane's per-image statistics (as
    :func:`~stainadapt.normalizers.macenko.concentration_statistics`, concentrations
    clamped at 0) and ``ok``: the NMF runs on every ``ceil(K / nmf_samples)``-th tissue
    pixel, starting from the Macenko stains.
    """
    od = od_from_intensity(sample.x, io, sample.dtype, ops.log1)
    w0, ok = macenko_stains(od, sample.tissue, 1.0, ops)
    ok = ok & sample.enough
    v = ops.strided_columns(od, sample.tissue, sample.count, nmf_samples)
    w = sparse_nmf(v, w0, lam, n_iter, ops)
    h_first = (w[:, 0, 0] >= w[:, 0, 1])[:, None, None]  # hematoxylin: larger red OD
    w = torch.where(h_first, w, torch.stack((w[:, :, 1], w[:, :, 0]), dim=2))
    cos = (w[:, :, 0] * w[:, :, 1]).sum(dim=1)
    ok = ok & (cos < 0.9994) & torch.isfinite(w).all(dim=2).all(dim=1)
    default = torch.tensor(DEFAULT_STAIN_MATRIX, dtype=od.dtype, device=od.device)
    w = torch.where(ok[:, None, None], w, default.expand_as(w))
    return concentration_statistics(w, od, ok, sample.valid, percentile, ops, nonnegative=True)


def vahadane_params(
    stats: dict[str, Tensor], ref_stains: Tensor, ref_max: Tensor, io: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(P (B, 2, 3), c (B, 2, 1), ref (B, 3, 2))``: concentrations
    ``max(0, c - P @ ln(I + 1))`` rebuilt with ``ref`` (see :func:`vahadane_transform`)."""
    pinv = stats["pinv"]
    scale = ref_max / stats["max_concentrations"]  # (B, 2)
    p = scale[:, :, None] * pinv  # (B, 2, 3)
    c = math.log(io) * p.sum(dim=2, keepdim=True)  # P @ (ln Io * 1)
    return p, c, ref_stains.expand(p.shape[0], 3, 2).contiguous()


def vahadane_transform(
    x: Tensor, params: tuple[Tensor, ...], io: float, ops: Ops = EAGER
) -> Tensor:
    """Intensities ``(B, 3, S)`` (0..255) -> normalised intensities ``(B, 3, S)`` (float)."""
    p, c, ref = params
    conc = torch.baddbmm(c, p, ops.log1(x, p.dtype), alpha=-1.0).clamp_(min=0)
    return ops.exp_(torch.bmm(ref, conc).neg_().add_(math.log(io)))


class VahadaneCore:
    """Vahadane's functional core over its options, for :class:`Vahadane` and its twin."""

    io: float
    percentile: float
    lam: float
    n_iter: int
    nmf_samples: int
    options = ("percentile", "lam", "n_iter", "nmf_samples")
    reference_buffers = ("stain_matrix", "max_concentrations")

    def core_statistics(self, sample: PixelSample, ops: Ops) -> tuple[dict[str, Tensor], Tensor]:
        args = (self.io, self.percentile, self.lam, self.n_iter, self.nmf_samples)
        return vahadane_statistics(sample, *args, ops)

    def core_params(self, stats: dict[str, Tensor], *reference: Tensor) -> tuple[Tensor, ...]:
        return vahadane_params(stats, *reference, self.io)

    def core_transform(self, x: Tensor, params: tuple[Tensor, ...], ops: Ops) -> Tensor:
        return vahadane_transform(x, params, self.io, ops)


class ExportableVahadane(VahadaneCore, ExportableCore):
    """:class:`Vahadane`'s trace-friendly twin (see :mod:`~stainadapt.normalizers.exportable`)."""


class Vahadane(VahadaneCore, CoreNormalizer):
    """Vahadane normaliser (sparse NMF stain vectors); an ``nn.Module``.

    Args:
        io, beta, percentile: as :class:`~stainadapt.normalizers.macenko.Macenko`.
        lam: L1 weight on the concentrations during dictionary learning (0.1, as the
            reference implementations pass to spams).
        n_iter: NMF alternations (exact lasso for H, projected least squares for W).
        nmf_samples: at most this many sampled pixels per image enter the NMF.
        max_samples, min_tissue, seed, chunk_pixels: see :class:`StainNormalizer`.

    Buffers: ``stain_matrix`` ``(3, 2)`` and ``max_concentrations`` ``(2,)``.
    """

    twin = ExportableVahadane

    def __init__(
        self,
        io: float = 240.0,
        beta: float = 0.15,
        percentile: float = 99.0,
        lam: float = 0.1,
        n_iter: int = 50,
        nmf_samples: int = 2**12,
        max_samples: int = 2**14,
        min_tissue: float = 0.01,
        seed: int = 0,
        chunk_pixels: int = 2**22,
    ) -> None:
        super().__init__(io, beta, max_samples, min_tissue, seed, chunk_pixels)
        if not 0 < percentile <= 100:
            raise InputError(f"percentile must be in (0, 100]; got {percentile}")
        if lam < 0 or n_iter < 1 or nmf_samples < 16:
            raise InputError("need lam >= 0, n_iter >= 1, nmf_samples >= 16")
        self.percentile = float(percentile)
        self.lam = float(lam)
        self.n_iter = int(n_iter)
        self.nmf_samples = int(nmf_samples)
        self.register_buffer("stain_matrix", torch.tensor(DEFAULT_STAIN_MATRIX))
        self.register_buffer("max_concentrations", torch.tensor(DEFAULT_MAX_CONCENTRATIONS))
