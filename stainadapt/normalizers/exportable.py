"""The trace-friendly side of the normalisers, for ``stainadapt export``.

The eager normalisers are written for speed: Python branches on the data (the
per-image too-little-tissue fallback, "sample only when the image is large"),
``torch.linalg`` solvers and numpy fast paths. Tracing (``torch.jit.trace``,
``torch.onnx.export``) would freeze those branches at the example's outcome, and ONNX
has no eigendecomposition. Each built-in normaliser therefore has a twin
(``normaliser.exportable()``) that runs the same functional core with
:data:`TRACEABLE` primitives and no Python branch on data, so the traced graph is the
normaliser for every input:

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
:func:`exportable_normalizer` builds the twin of a fitted normaliser through its
``exportable()`` hook, so a plugin normaliser that implements the hook exports too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import not_exportable
from .od import tissue_from_intensity
from .ops import Ops, PixelSample

__all__ = [
    "TRACEABLE",
    "ExportableCore",
    "ExportableNormalizer",
    "exportable_normalizer",
    "jacobi_eigh3",
]

#: Cyclic Jacobi sweeps for the 3x3 covariance: 3 rotations each; float32 converges
#: in 3-4 sweeps (quadratic convergence), 6 leaves a wide margin.
JACOBI_SWEEPS = 6


def _quantiles(values: Tensor, mask: Tensor | None, qs: Sequence[float]) -> Tensor:
    """Per-row quantiles of ``values`` ``(R, K)`` over ``mask`` ``(R, K)``; ``(R, len(qs))``.

    The interpolation of :func:`~stainadapt.normalizers.od.masked_quantile` (numpy's
    linear), from one ascending sort with masked-out entries moved to the end; rows
    without a valid entry give 0.
    """
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
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


def _solve2_checked(g: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_solve2` with no failure flag: a zero determinant shows as a non-finite
    result, which the NMF checks."""
    return _solve2(g, r), torch.zeros_like(g[:, 0, 0], dtype=torch.bool)


def _log1(x: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.log(x.to(dtype) + 1.0)


def _strided_columns(od: Tensor, tissue: Tensor, count: int | Tensor, limit: int) -> Tensor:
    """Every ``ceil(count / limit)``-th column of the padded sample, as a fixed ``limit``
    columns (``limit`` at most the sample width); those past ``count`` are zero."""
    b, _, k = od.shape
    j = min(limit, k)
    stride = torch.clamp((count + limit - 1) // limit, min=1)
    cols = torch.arange(j, device=od.device) * stride
    use = (cols < count)[None] & tissue.gather(1, cols.clamp(max=k - 1)[None].expand(b, j))
    cols = cols.clamp(max=k - 1)
    return od.gather(2, cols[None, None].expand(b, 3, j)) * use[:, None].to(od.dtype)


#: The exportable twins' primitives: arithmetic only, no Python branch on data.
TRACEABLE = Ops(
    log1=_log1,
    exp_=torch.exp,
    eigh=jacobi_eigh3,
    quantile=_quantiles,
    pinv=_pinv32,
    solve=_solve2,
    solve_checked=_solve2_checked,
    strided_columns=_strided_columns,
)


class ExportableNormalizer(nn.Module):
    """Base of the twins: the fixed-size seeded sample, tissue mask and per-image fallback.

    Subclasses give ``_fit(sample)`` -> ``(params, ok)`` from a :class:`PixelSample` and
    ``_transform(x, params)`` on ``(B, 3, N)`` intensities (0..255 float), with no Python
    branch on the data (:class:`ExportableCore` takes both from a functional core).
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

    def _copy_buffers(self, source: nn.Module, *names: str) -> None:
        """Take the source's fitted buffers ``names`` as float32 copies."""
        for name in names:
            self.register_buffer(name, getattr(source, name).detach().float().clone())

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

    def _fit(self, sample: PixelSample) -> tuple[tuple[Tensor, ...], Tensor]:
        raise NotImplementedError

    def _transform(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        raise NotImplementedError

    def forward(self, image: Tensor) -> Tensor:
        """``float (B, 3, H, W)`` 0..255 -> normalised, same shape, integers in 0..255."""
        flat = image.flatten(2)
        x, valid, count = self._sample(flat)
        tissue = tissue_from_intensity(x, self.io, self.beta) & valid[None]
        enough = self._enough_tissue(tissue, count)
        params, ok = self._fit(PixelSample(x, tissue, enough, valid, count, x.dtype))
        out = self._transform(flat, params).clamp(0.0, 255.0).round()
        out = torch.where(ok[:, None, None], out, flat)
        return out.reshape(image.shape)


class ExportableCore(ExportableNormalizer):
    """The twin of a :class:`~stainadapt.normalizers.base.CoreNormalizer`.

    Listed after the same core mixin as its source (``class ExportableMacenko(MacenkoCore,
    ExportableCore)``): it copies the source's options and fitted buffers (float32) and
    runs the core with :data:`TRACEABLE`.
    """

    def __init__(self, source: nn.Module) -> None:
        super().__init__(source)
        for name in source.options:
            setattr(self, name, getattr(source, name))
        self._copy_buffers(source, *source.reference_buffers)

    def _fit(self, sample: PixelSample) -> tuple[tuple[Tensor, ...], Tensor]:
        stats, ok = self.core_statistics(sample, TRACEABLE)
        return self.core_params(stats, *(getattr(self, n) for n in self.reference_buffers)), ok

    def _transform(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        return self.core_transform(x, params, TRACEABLE)


def exportable_normalizer(normalizer: nn.Module) -> nn.Module:
    """The trace-friendly twin of a fitted normaliser (float32, on CPU, in eval mode).

    Asks the normaliser's ``exportable()`` hook; raises :class:`InputError` for one
    without a twin (the hook is missing or not implemented).
    """
    hook = getattr(normalizer, "exportable", None)
    if not callable(hook):
        raise not_exportable(normalizer)
    return hook().cpu().eval()
