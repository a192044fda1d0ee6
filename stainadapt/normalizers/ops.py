"""What the eager and the trace-friendly normalisers do differently, behind one interface.

Each method's maths (:mod:`.macenko`, :mod:`.vahadane`, :mod:`.reinhard`) is written once,
as pure functions over a :class:`PixelSample` and an :class:`Ops`. The eager normalisers
pass :data:`EAGER`: ``torch.linalg`` solvers, partial top-k percentiles and numpy's
vectorised ``log``/``exp`` on CPU. The exportable twins pass
:data:`~stainadapt.normalizers.exportable.TRACEABLE`: arithmetic-only replacements with
no Python branch on data, so a traced graph (TorchScript, ONNX) holds for every input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .od import exp_, intensity_to_log, masked_quantile

__all__ = ["EAGER", "Ops", "PixelSample"]


class PixelSample(NamedTuple):
    """The pixels an image's statistics are estimated from.

    ``x``: ``(B, 3, K)`` intensities 0..255 (uint8, or float in the compute dtype);
    ``tissue``: ``(B, K)`` bool, the stain pixels (False at invalid columns);
    ``enough``: ``(B,)`` bool, enough tissue to estimate from;
    ``valid``: ``(K,)`` bool, the columns that hold pixels (the exportable sample is padded
    to a fixed width), or None when every column does;
    ``count``: how many columns are valid (int, or a 0-d tensor when traced);
    ``dtype``: the dtype the maths runs in.
    """

    x: Tensor
    tissue: Tensor
    enough: Tensor
    valid: Tensor | None
    count: int | Tensor
    dtype: torch.dtype


@dataclass(frozen=True)
class Ops:
    """The primitives the normaliser maths leaves open (shapes batched over images).

    Attributes:
        log1: ``(x, dtype)`` -> ``ln(x + 1)`` as a new ``dtype`` tensor (x in 0..255).
        exp_: exp of a freshly computed tensor, in place where it can.
        eigh: symmetric ``(B, 3, 3)`` -> ``(values (B, 3) ascending, vectors as columns)``.
        quantile: ``(values (R, K), mask (R, K) or None, qs)`` -> ``(R, len(qs))``, numpy's
            linear interpolation over each row's masked entries.
        pinv: pseudo-inverse of full-rank ``(B, 3, 2)`` -> ``(B, 2, 3)``.
        solve: ``(A (B, 2, 2), R (B, 2, N))`` -> ``A^-1 R``.
        solve_checked: as ``solve``, and ``(B,)`` bool where the solver reported failure.
        strided_columns: ``(od (B, 3, K), tissue (B, K), count, limit)`` -> OD of every
            ``ceil(count / limit)``-th column, zero where it is not tissue (at most
            ``limit`` columns; zero columns are ignored by the NMF).
    """

    log1: Callable[[Tensor, torch.dtype], Tensor]
    exp_: Callable[[Tensor], Tensor]
    eigh: Callable[[Tensor], tuple[Tensor, Tensor]]
    quantile: Callable[[Tensor, Tensor | None, Sequence[float]], Tensor]
    pinv: Callable[[Tensor], Tensor]
    solve: Callable[[Tensor, Tensor], Tensor]
    solve_checked: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    strided_columns: Callable[[Tensor, Tensor, int | Tensor, int], Tensor]


def _solve_checked(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    x, info = torch.linalg.solve_ex(a, b)
    return x, info != 0


def _strided_columns(od: Tensor, tissue: Tensor, count: int | Tensor, limit: int) -> Tensor:
    stride = max(1, math.ceil(int(count) / limit))
    return od[:, :, ::stride] * tissue[:, None, ::stride].to(od.dtype)


#: The eager normalisers' primitives: LAPACK/cuSOLVER, top-k percentiles, numpy on CPU.
EAGER = Ops(
    log1=intensity_to_log,
    exp_=exp_,
    eigh=torch.linalg.eigh,
    quantile=masked_quantile,
    pinv=torch.linalg.pinv,
    solve=torch.linalg.solve,
    solve_checked=_solve_checked,
    strided_columns=_strided_columns,
)
