"""The divergence guard: a diverged epoch is rolled back, never written.

Two signs, read once per epoch: one optimiser skipped ``divergence_steps`` consecutive
updates (non-finite loss; the run of skips may span epochs), or a weight or BatchNorm
statistic of G, its moving average or a discriminator is no longer finite (a finite loss
can still give an infinite gradient, and a skipped step still updates BatchNorm's running
statistics). A rollback reloads the last epoch boundary's ``state.pt`` with every
learning rate times ``rollback_lr_factor`` and retries the epoch on the same crops; after
``max_rollbacks`` the run stops with :class:`RunFailure`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ... import distributed
from ...errors import RunFailure
from ...runs import non_finite
from ..state import STATE_FILE, load_state, save_state
from .base import Callback
from .run_writer import write_metrics

__all__ = ["DivergenceGuard", "SkipCounter"]

logger = logging.getLogger(__name__)


class SkipCounter:
    """Consecutive skipped updates per optimiser, kept on the device (no host sync).

    A run grows by one per skipped update and drops to 0 at a finite one; it carries over
    epoch boundaries. :meth:`pop_max` is the longest run seen since the last call.
    """

    def __init__(self) -> None:
        self._run: dict[int, torch.Tensor] = {}
        self._max: torch.Tensor | None = None

    def count(self, opt: torch.optim.Optimizer, bad: torch.Tensor) -> None:
        """``bad``: a 0-dim float tensor, 1 when this update of ``opt`` was skipped."""
        run = (self._run.get(id(opt), 0) + bad) * bad
        self._run[id(opt)] = run
        self._max = run if self._max is None else torch.maximum(self._max, run)

    def pop_max(self) -> int:
        """The longest run since the last call (one host read), and start afresh."""
        streak = 0 if self._max is None else int(self._max.item())
        self._max = None
        return streak

    def clear(self) -> None:
        """Forget every run (new optimisers, or a rollback)."""
        self._run.clear()
        self._max = None


class DivergenceGuard(Callback):
    """Checks every trained epoch; rolls back and discards it when it diverged."""

    def on_epoch_trained(self, t: Any, epoch: int, record: dict[str, Any]) -> bool:
        streak = t.skips.pop_max()
        if streak:
            record["max_skip_run"] = streak
        bad = non_finite([t.model.state_dict(), *(d.state_dict() for d in t.discs),
                          *([t.ema.module.state_dict()] if t.ema is not None else [])])
        # Under torchrun, rank 0's verdict for all: BatchNorm statistics may differ between
        # ranks (parameters and the skip streak do not), and ranks must roll back together.
        bad = distributed.broadcast_object(bad)
        k = t.cfg.divergence_steps
        if bad:
            reason = f"non-finite weights ({bad[0]}{' ...' if len(bad) > 1 else ''})"
        elif k and streak >= k:
            reason = f"{streak} consecutive non-finite losses (steps skipped)"
        else:
            return False
        if not k:
            raise RunFailure(f"training diverged in epoch {epoch + 1}: {reason}; "
                             "rollback is off (divergence_steps = 0)")
        self._rollback(t, epoch, reason)
        return True

    def _rollback(self, t: Any, epoch: int, reason: str) -> None:
        """Reload the last epoch boundary's ``state.pt`` with lower learning rates.

        The state on disk is always the boundary before the epoch now running (it is
        written after every epoch), so the retried epoch sees the same crops. The lowered
        rates and the rollback count are saved at once: a resumed run keeps them.
        """
        cfg = t.cfg
        count = t.rollbacks + 1
        path = t.run_dir / STATE_FILE
        if count > cfg.max_rollbacks:
            raise RunFailure(
                f"training diverged in epoch {epoch + 1} ({reason}) after {t.rollbacks} "
                f"rollback(s) (max_rollbacks = {cfg.max_rollbacks}); {path} holds the "
                f"last good state (epoch {epoch}); try a new run with a lower lr / disc_lr")
        t.load_state_dict(load_state(path))
        distributed.barrier()  # every rank has read state.pt before rank 0 rewrites it below
        t.rollbacks = count
        factor = cfg.rollback_lr_factor
        for opt in (t.opt_g, *t.opt_d):
            for group in opt.param_groups:
                group["lr"] = float(group["lr"]) * factor
                if "base_lr" in group:  # what an lr schedule scales
                    group["base_lr"] = float(group["base_lr"]) * factor
        t.skips.clear()
        lr = t.opt_g.param_groups[0]["lr"]
        disc_lr = [o.param_groups[0]["lr"] for o in t.opt_d]
        t.events.append({"event": "rollback", "epoch": epoch, "to_epoch": t.epoch,
                         "reason": reason, "rollback": count, "lr": lr, "disc_lr": disc_lr})
        message = (f"warning: epoch {epoch + 1} diverged ({reason}); rolled back to the state "
                   f"after epoch {t.epoch}, learning rates x{factor:g} (G {lr:.3g}"
                   + (f", D {disc_lr[0]:.3g}" if disc_lr else "")
                   + f"); rollback {count} of at most {cfg.max_rollbacks}")
        if t.console is not None:
            t.console.print(message, style="yellow", highlight=False, markup=False)
        elif t.main:
            logger.warning(message)
        if t.main:
            write_metrics(t)
            save_state(path, t.state_dict())
