"""G's learning rate as a pure function of the optimiser step.

A constant 1e-3 (the paper's Adam setting) lets a small real data set oscillate between
guesses late in training; a short linear warm-up and a decay to zero (cosine, or
nnU-Net's polynomial ``(1 - t) ** 0.9``) settle it. The factor depends only on the step
index and the run's total, never on optimiser state, so a resumed run has the same
learning rate at every step as an uninterrupted one.
"""

from __future__ import annotations

import math

__all__ = ["LR_SCHEDULES", "lr_factor", "set_lr"]

LR_SCHEDULES = ("constant", "cosine", "poly")


def lr_factor(step: int, total: int, schedule: str = "constant", warmup: int = 0) -> float:
    """The multiplier of the base learning rate at 0-based ``step`` of ``total`` steps.

    ``warmup`` steps ramp linearly from ``1 / warmup`` to 1; then ``constant`` stays at 1,
    ``cosine`` follows half a cosine to 0 at ``total`` and ``poly`` follows
    ``(1 - t) ** 0.9``. Steps past ``total`` keep the last value.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, "
                         f"got {schedule!r}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    t = min(max(step - warmup, 0), span) / span
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return (1.0 - t) ** 0.9


def set_lr(optimizer: object, base_lrs: list[float], factor: float) -> None:
    """Set every parameter group's lr to its base lr times ``factor``.

    ``base_lrs`` holds one base per group (groups may have their own, e.g. a smaller
    learning rate for a pretrained encoder).
    """
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):  # type: ignore[attr-defined]
        group["lr"] = base * factor
