"""Trace-friendly copies of the built-in normalisers, for ``stainadapt export``.

The normalisers in this package are written for speed in eager PyTorch: Python
branches on the data (the per-image too-little-tissue fallback, "sample only when the
image is large"), ``torch.linalg.eigh`` / ``pinv`` / ``solve`` and numpy fast paths.
Tracing (``torch.jit.trace``, ``torch.onnx.export``) would freeze those branches at the
example's outcome, and ONNX has no eigendecomposition. The modules here redo the same
per-image maths with no Python branch on data, so the traced graph is the normaliser
for every input:

* the pixel sample is the one :func:`~stainadapt.normalizers.od.sample_pixels` draws
  (the same seeded stratified positions, stored as a constant), padded to a fixed
  ``max_samples`` columns with a validity mask, so "all pixels when the image is small"
  and "a subsample when it is large" are one computation selected by ``torch.where``;
* percentiles: one ``torch.sort`` of masked values (invalid ones set to +inf) and two
  ``gather`` at indices computed from each row's count of valid entries, with the same
  linear interpolation as :func:`~stainadapt.normalizers.od.masked_quantile`;
* Macenko's 3x3 symmetric eigenproblem: a fixed number of cyclic Jacobi sweeps
  (arithmetic only; converged to float32 precision well before the last sweep);
* 3x2 pseudo-inverses and 2x2 solves: closed forms;
* Vahadane's sparse NMF: the same alternation, unrolled for its ``n_iter`` steps;
* the pass-through of images with too little tissue (or a degenerate estimate):
  ``torch.where(ok, normalised, image)`` per image.

Input ``float (B, 3, H, W)`` in 0..255 (uint8 values), output the same, rounded to
integers as the uint8 normalisers store them. On CPU in float32 the result matches
the eager normaliser on uint8 input to within float rounding (a pixel may land on the
other side of a .5 and differ by 1); ``tests/objects/test_export_model.py`` measures it.
Build one with :func:`exportable_normalizer` from a fitted normaliser.
"""

from __future__ import annotations

import math

import torch
from kornia.color import lab_to_rgb, rgb_to_lab
from torch import Tensor, nn

from ..errors import InputError
from .macenko import DEFAULT_STAIN_MATRIX, Macenko, stains_from_plane
from .reinhard import Reinhard
from .vahadane import Vahadane, _lasso2, collapsed_stains

__all__ = [
    "ExportableMacenko",
    "ExportableNormalizer",
    "ExportableReinhard",
    "ExportableVahadane",
    "exportable_normalizer",
    "jacobi_eigh3",
]

#: Cyclic Jacobi sweeps for the 3x3 covariance: 3 rotations each; float32 converges
#: in 3-4 sweeps (quadratic convergence), 6 leaves a wide margin.
JACOBI_SWEEPS = 6


def _quantiles(values: Tensor, mask: Tensor, qs: tuple[float, ...]) -> Tensor:
    """Per-row quantiles of ``values`` ``(R, K)`` over ``mask`` ``(R, K)``; ``(R, len(qs))``.

    The interpolation of :func:`~stainadapt.normalizers.od.masked_quantile` (numpy's
    linear), from one ascending sort with masked-out entries moved to the end; rows
    without a valid entry give 0.
    """
    n = mask.sum(dim=1)
    last = (n - 1).clamp(min=0)
    s, _ = torch.where(mask, values, torch.full_like(values, float("inf"))).sort(dim=1)
    outs = []
    for q in qs:
        pos = float(q) * last.to(values.dtype)
        lo = pos.floor().long().clamp(min=0)
        hi = torch.minimum(lo + 1, last)
        frac = pos - lo.to(values.dtype)
        a, c = s.gather(1, lo[:, None]), s.gather(1, hi[:, None])
        outs.append(a + (c - a) * frac[:, None])
    out = torch.cat(outs, dim=1)
    return torch.where((n > 0)[:, None], out, torch.zeros_like(out))


def jacobi_eigh3(a: Tensor, sweeps: int = JACOBI_SWEEPS) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of symmetric ``(B, 3, 3)`` matrices, arithmetic only.

    Cyclic Jacobi rotations (Numerical Recipes' formulation) for a fixed number of
    sweeps: exportable to ONNX, which has no eigendecomposition operator. Returns
    ``(values (B, 3) ascending, vectors (B, 3, 3) as columns)`` like ``torch.linalg.eigh``
    (the signs of the vectors are arbitrary, as there).
    """
    dtype, device = a.dtype, a.device
    eye = torch.eye(3, dtype=dtype, device=device)
    v = eye.expand_as(a)
    tiny = torch.finfo(dtype).tiny
    for _ in range(sweeps):
        for p, q in ((0, 1), (0, 2), (1, 2)):
            cells = [[0.0] * 3 for _ in range(3)]
            cells[p][p] = cells[q][q] = 1.0
            pp = torch.tensor(cells, dtype=dtype, device=device)
            cells = [[0.0] * 3 for _ in range(3)]
            cells[p][q], cells[q][p] = 1.0, -1.0
            sk = torch.tensor(cells, dtype=dtype, device=device)
            apq, app, aqq = a[:, p, q], a[:, p, p], a[:, q, q]
            zero = apq.abs() <= tiny
            theta = (aqq - app) / (2.0 * torch.where(zero, torch.ones_like(apq), apq))
            sign = torch.where(theta >= 0, torch.ones_like(theta), -torch.ones_like(theta))
            t = sign / (theta.abs() + torch.sqrt(theta * theta + 1.0))
            t = torch.where(zero | ~torch.isfinite(t), torch.zeros_like(t), t)
            c = torch.rsqrt(t * t + 1.0)
            s = t * c
            rot = eye + (c - 1.0)[:, None, None] * pp + s[:, None, None] * sk
            a = rot.transpose(1, 2) @ a @ rot
            v = v @ rot
    vals = torch.diagonal(a, dim1=1, dim2=2)
    vals, order = vals.sort(dim=1)
    vecs = v.gather(2, order[:, None, :].expand_as(v))
    return vals, vecs


def _pinv32(s: Tensor) -> Tensor:
    """Pseudo-inverse of full-rank ``(B, 3, 2)`` matrices: ``(S^T S)^-1 S^T`` in closed form."""
    g = s.transpose(1, 2) @ s
    a, b, d = g[:, 0, 0], g[:, 0, 1], g[:, 1, 1]
    det = (a * d - b * b)[:, None, None]
    inv = torch.stack((torch.stack((d, -b), 1), torch.stack((-b, a), 1)), 1) / det
    return inv @ s.transpose(1, 2)


def _solve2(g: Tensor, r: Tensor) -> Tensor:
    """``g^-1 @ r`` for ``(B, 2, 2)`` ``g`` and ``(B, 2, N)`` ``r`` (Cramer's rule)."""
    a, b, c, d = g[:, 0, 0, None], g[:, 0, 1, None], g[:, 1, 0, None], g[:, 1, 1, None]
    det = a * d - b * c
    x0 = (d * r[:, 0] - b * r[:, 1]) / det
    x1 = (a * r[:, 1] - c * r[:, 0]) / det
    return torch.stack((x0, x1), dim=1)


def _log1(x: Tensor) -> Tensor:
    return torch.log(x + 1.0)


class ExportableNormalizer(nn.Module):
    """Base: the fixed-size seeded sample, tissue mask and per-image fallback.

    Subclasses give ``_fit_image(sample, valid, tissue, count)`` -> ``(params, ok)`` and
    ``_apply(x, params)`` on ``(B, 3, N)`` intensities (0..255 float).
    """

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.io = float(source.io)
        self.beta = float(source.beta)
        self.min_tissue = float(source.min_tissue)
        self.max_samples = int(source.max_samples)
        # The stratified offsets sample_pixels draws for this seed (used when N > K).
        gen = torch.Generator().manual_seed(int(source.seed))
        offsets = torch.rand(self.max_samples, generator=gen, dtype=torch.float64)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("columns", torch.arange(self.max_samples), persistent=False)

    def _sample(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, 3, N)`` -> ``(sample (B, 3, K), valid (K,) bool, count)``.

        ``sample_pixels`` keeps every pixel when ``N <= K`` and draws ``K`` stratified
        positions otherwise; here both index sets are built and ``torch.where`` picks
        one, with the columns past ``N`` (small images) marked invalid.
        """
        k = self.max_samples
        n = torch._shape_as_tensor(flat)[2].to(self.columns.device)
        strat = ((self.columns.double() + self.offsets) * (n.double() / k)).long()
        strat = torch.minimum(strat, n - 1)
        idx = torch.where(n <= k, torch.minimum(self.columns, n - 1), strat)
        valid = self.columns < n
        sample = flat.gather(2, idx[None, None, :].expand(flat.shape[0], 3, k))
        return sample, valid, torch.minimum(n, torch.full_like(n, k))

    def _enough_tissue(self, tissue: Tensor, count: Tensor) -> Tensor:
        need = torch.clamp(self.min_tissue * count.to(torch.float32), min=16.0)
        return tissue.to(torch.float32).sum(dim=1) >= need

    def _od(self, x: Tensor) -> Tensor:
        return math.log(self.io) - _log1(x)

    def _fit_image(
        self, sample: Tensor, valid: Tensor, tissue: Tensor, count: Tensor
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        raise NotImplementedError

    def _apply(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        raise NotImplementedError

    def forward(self, image: Tensor) -> Tensor:
        """``float (B, 3, H, W)`` 0..255 -> normalised, same shape, integers in 0..255."""
        flat = image.flatten(2)
        sample, valid, count = self._sample(flat)
        limit = self.io * math.exp(-self.beta) - 1.0
        tissue = (sample.amax(dim=1) <= limit) & valid[None]
        params, ok = self._fit_image(sample, valid, tissue, count)
        out = self._apply(flat, params).clamp(0.0, 255.0).round()
        out = torch.where(ok[:, None, None], out, flat)
        return out.reshape(image.shape)


class ExportableReinhard(ExportableNormalizer):
    """:class:`~stainadapt.normalizers.reinhard.Reinhard`, trace-friendly."""

    def __init__(self, source: Reinhard) -> None:
        super().__init__(source)
        self.tissue_only = bool(source.tissue_only)
        self.register_buffer("lab_mean", source.lab_mean.detach().float().clone())
        self.register_buffer("lab_std", source.lab_std.detach().float().clone())

    @staticmethod
    def _lab(x: Tensor) -> Tensor:
        return rgb_to_lab((x / 255.0).unsqueeze(-1)).squeeze(-1)

    def _fit_image(self, sample, valid, tissue, count):  # noqa: ANN001, ANN202
        lab = self._lab(sample)
        w = (tissue if self.tissue_only else valid[None].expand_as(tissue)).to(lab.dtype)
        n = w.sum(dim=1).clamp(min=1)[:, None]
        mean = (lab * w[:, None]).sum(dim=2) / n
        var = (((lab - mean[:, :, None]) ** 2) * w[:, None]).sum(dim=2) / n
        std = var.sqrt()
        ok = self._enough_tissue(tissue, count) & (std >= 1e-3).all(dim=1)
        std = torch.where(ok[:, None], std, torch.ones_like(std))
        scale = self.lab_std / std
        shift = self.lab_mean - mean * scale
        return (scale[:, :, None], shift[:, :, None]), ok

    def _apply(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        scale, shift = params
        lab = torch.addcmul(shift, self._lab(x), scale)
        return lab_to_rgb(lab.unsqueeze(-1), clip=True).squeeze(-1) * 255.0


def _macenko_stains(od: Tensor, tissue: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """:func:`~stainadapt.normalizers.macenko.macenko_stains` with Jacobi for ``eigh``."""
    w = tissue.to(od.dtype)
    n = w.sum(dim=1)
    odm = od * w[:, None]
    mean = odm.sum(dim=2) / n.clamp(min=1)[:, None]
    second = odm @ od.transpose(1, 2)
    cov = (second - n[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (n - 1).clamp(min=1)[
        :, None, None
    ]
    enough = n >= 2
    fallback = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=od.dtype, device=od.device))
    cov = torch.where(enough[:, None, None], cov, fallback)
    _, vecs = jacobi_eigh3(cov)
    return stains_from_plane(
        vecs[:, :, 2], vecs[:, :, 1], od, tissue, enough, alpha, quantile=_quantiles
    )


class _StainBased(ExportableNormalizer):
    def __init__(self, source: Macenko | Vahadane) -> None:
        super().__init__(source)
        self.percentile = float(source.percentile)
        self.register_buffer("stain_matrix", source.stain_matrix.detach().float().clone())
        self.register_buffer(
            "max_concentrations", source.max_concentrations.detach().float().clone()
        )

    def _max_conc(self, conc: Tensor, valid: Tensor) -> Tensor:
        b, _, k = conc.shape
        mask = valid[None].expand(b * 2, k)
        return _quantiles(conc.reshape(b * 2, k), mask, (self.percentile / 100.0,)).reshape(b, 2)


class ExportableMacenko(_StainBased):
    """:class:`~stainadapt.normalizers.macenko.Macenko`, trace-friendly."""

    def __init__(self, source: Macenko) -> None:
        super().__init__(source)
        self.alpha = float(source.alpha)

    def _fit_image(self, sample, valid, tissue, count):  # noqa: ANN001, ANN202
        od = self._od(sample)
        stains, ok = _macenko_stains(od, tissue, self.alpha)
        ok = ok & self._enough_tissue(tissue, count)
        pinv = _pinv32(stains)
        maxc = self._max_conc(pinv @ od, valid)
        ok = ok & (maxc > 1e-6).all(dim=1)
        maxc = torch.where(ok[:, None], maxc, torch.ones_like(maxc))
        scale = self.max_concentrations / maxc
        m = self.stain_matrix @ (scale[:, :, None] * pinv)
        c = math.log(self.io) * (1.0 - m.sum(dim=2, keepdim=True))
        return (m, c), ok

    def _apply(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        m, c = params
        return torch.exp(m @ _log1(x) + c)


def _sparse_nmf(v: Tensor, w0: Tensor, lam: float, n_iter: int) -> Tensor:
    """:func:`stainadapt.normalizers.vahadane.sparse_nmf`, unrolled, closed-form solves.

    The same degenerate-estimate rule: an image whose stain vectors collapse onto one
    colour (:func:`~stainadapt.normalizers.vahadane.collapsed_stains`) or whose solve is
    not finite (Cramer's rule with a zero determinant) gets an all-NaN ``W``.
    """
    w = w0.clamp(min=0)
    w = w / w.norm(dim=1, keepdim=True).clamp(min=1e-8)
    live = (v.abs().sum(dim=1, keepdim=True) > 0).to(v.dtype)
    eye = torch.eye(2, dtype=v.dtype, device=v.device)
    bad = torch.zeros_like(w[:, 0, 0], dtype=torch.bool)
    for _ in range(n_iter):
        g = w.transpose(1, 2) @ w
        bad = bad | collapsed_stains(g)
        g = torch.where(bad[:, None, None], eye, g)
        h = _lasso2(g, w.transpose(1, 2) @ v, lam, solve=_solve2) * live
        hht = h @ h.transpose(1, 2) + 1e-6 * eye
        hht = torch.where(bad[:, None, None], eye, hht)
        wt = _solve2(hht, h @ v.transpose(1, 2))
        bad = bad | ~torch.isfinite(wt).all(dim=2).all(dim=1)
        w_new = wt.transpose(1, 2).clamp(min=0)
        norm = w_new.norm(dim=1, keepdim=True)
        w = torch.where(norm > 1e-6, w_new / norm.clamp(min=1e-8), w)
    return torch.where(bad[:, None, None], torch.full_like(w, float("nan")), w)


class ExportableVahadane(_StainBased):
    """:class:`~stainadapt.normalizers.vahadane.Vahadane`, trace-friendly."""

    def __init__(self, source: Vahadane) -> None:
        super().__init__(source)
        self.lam = float(source.lam)
        self.n_iter = int(source.n_iter)
        self.nmf_samples = int(source.nmf_samples)

    def _fit_image(self, sample, valid, tissue, count):  # noqa: ANN001, ANN202
        od = self._od(sample)
        w0, ok = _macenko_stains(od, tissue, 1.0)
        ok = ok & self._enough_tissue(tissue, count)
        # Vahadane takes every stride-th sampled pixel, stride = ceil(count / nmf_samples):
        # at most nmf_samples columns; the unused ones are zero (the NMF ignores them).
        k = sample.shape[2]
        j = min(self.nmf_samples, self.max_samples)
        stride = torch.clamp((count + self.nmf_samples - 1) // self.nmf_samples, min=1)
        cols = self.columns[:j] * stride
        use = (cols < count)[None] & tissue.gather(
            1, cols.clamp(max=k - 1)[None].expand(od.shape[0], j)
        )
        cols = cols.clamp(max=k - 1)
        v = od.gather(2, cols[None, None].expand(od.shape[0], 3, j)) * use[:, None].to(od.dtype)
        w = _sparse_nmf(v, w0, self.lam, self.n_iter)
        h_first = (w[:, 0, 0] >= w[:, 0, 1])[:, None, None]
        w = torch.where(h_first, w, torch.stack((w[:, :, 1], w[:, :, 0]), dim=2))
        cos = (w[:, :, 0] * w[:, :, 1]).sum(dim=1)
        ok = ok & (cos < 0.9994) & torch.isfinite(w).all(dim=2).all(dim=1)
        default = torch.tensor(DEFAULT_STAIN_MATRIX, dtype=od.dtype, device=od.device)
        w = torch.where(ok[:, None, None], w, default.expand_as(w))
        pinv = _pinv32(w)
        maxc = self._max_conc((pinv @ od).clamp(min=0), valid)
        ok = ok & (maxc > 1e-6).all(dim=1)
        maxc = torch.where(ok[:, None], maxc, torch.ones_like(maxc))
        scale = self.max_concentrations / maxc
        p = scale[:, :, None] * pinv
        c = math.log(self.io) * p.sum(dim=2, keepdim=True)
        return (p, c), ok

    def _apply(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        p, c = params
        conc = (c - p @ _log1(x)).clamp(min=0)
        return torch.exp(math.log(self.io) - self.stain_matrix @ conc)


_EXPORTABLE: dict[type, type[ExportableNormalizer]] = {
    Reinhard: ExportableReinhard,
    Macenko: ExportableMacenko,
    Vahadane: ExportableVahadane,
}


def exportable_normalizer(normalizer: nn.Module) -> ExportableNormalizer:
    """The trace-friendly twin of a fitted built-in normaliser (float32, on CPU).

    Raises :class:`InputError` for any other type (a registered third-party normaliser,
    or a subclass whose maths this module cannot know).
    """
    cls = _EXPORTABLE.get(type(normalizer))
    if cls is None:
        names = ", ".join(c.__name__ for c in _EXPORTABLE)
        raise InputError(
            f"cannot bake a {type(normalizer).__name__} normaliser into an exported model "
            f"(only {names} have a trace-friendly twin); export without it "
            "(--no-normalizer) and normalise the images first"
        )
    return cls(normalizer.float().cpu()).eval()
