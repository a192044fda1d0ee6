"""G's learning rate as a pure function of the optimiser step.

A constant 1e-3 (the paper's Adam setting) lets a small real data set oscillate between
guesses late in training; a short linear warm-up and a decay to zero (cosine, or
nnU-Net's polynomial ``(1 - t) ** 0.9``) settle it. The factor depends only on the step
index and the run's total, never on optimiser state, so a resumed run has the same
learning rate at every step as an uninterrupted one.
"""

from __future__ import annotations

import math

from ..config import LR_SCHEDULES

__all__ = ["LR_SCHEDULES", "lr_factor", "GeneratorLR"]


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


class GeneratorLR:
    """Sets G's learning rate before each G step of a run (``lr_schedule``, ``warmup_steps``).

    The schedule runs over the G steps of the whole run: every epoch except the ``disc``
    ones (which freeze G), ``steps`` each. Each parameter group scales its own
    ``base_lr`` (written into the group when the optimiser is made, kept in ``state.pt``
    and lowered by a divergence rollback), so groups keep their ratios. With the
    ``constant`` schedule and no warm-up it does nothing, and the optimiser's groups stay
    as they always were.
    """

    def __init__(self, schedule: str, warmup: int, phases: list[str], steps: int) -> None:
        self.schedule, self.warmup, self.steps = schedule, int(warmup), int(steps)
        self.active = schedule != "constant" or self.warmup > 0
        self.before: list[int] = []  # G epochs before each epoch
        count = 0
        for phase in phases:
            self.before.append(count)
            count += phase != "disc"
        self.phases = list(phases)
        self.total = count * self.steps

    def factor(self, epoch: int, step: int) -> float:
        """The multiplier at ``step`` of ``epoch`` (1 where the schedule is inactive)."""
        if not self.active:
            return 1.0
        index = self.before[min(epoch, len(self.before) - 1)] * self.steps + step
        return lr_factor(index, self.total, self.schedule, self.warmup)

    def __call__(self, optimizer: object, epoch: int, step: int) -> None:
        if not self.active or self.phases[epoch] == "disc":
            return
        f = self.factor(epoch, step)
        for group in optimizer.param_groups:  # type: ignore[attr-defined]
            group["lr"] = group.get("base_lr", group["lr"]) * f
