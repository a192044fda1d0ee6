"""The hooks a training callback may implement, in the order the fit loop calls them.

``Trainer.fit`` is a short loop; everything around it (run-folder files, self-training,
the divergence guard, progress bars, overlays, debug checksums) is a :class:`Callback`.
Per run::

    on_fit_start
    per epoch:  on_epoch_start -> steps (on_step_end after each) -> on_epoch_trained
                -> [selection] -> on_epoch_end
    on_fit_exit        (always, also on an error or an interrupt)
    on_fit_end         (only when fit returns normally)

``on_epoch_trained`` may discard the epoch (return True): the loop then retries from
``trainer.epoch``, which the callback has set back. ``on_epoch_end`` runs while SIGINT
and SIGTERM are held, so the epoch's files are written whole.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Callback"]


class Callback:
    """A no-op for every hook; a callback overrides the hooks it needs.

    ``t`` is the :class:`~stainadapt.engine.trainer.Trainer`; ``record`` the epoch's
    metrics line (``epoch``, ``phase``, ``losses``, ``val``, ...), which a callback may
    extend before it is written.
    """

    def on_fit_start(self, t: Any) -> None:
        """Before the first epoch of this ``fit`` call."""

    def on_epoch_start(self, t: Any, epoch: int, phase: str) -> None:
        """Before ``epoch`` seeds its RNGs and draws its batches."""

    def on_step_end(self, t: Any, step: int, acc: dict[str, Any]) -> None:
        """After step ``step`` of the epoch; ``acc`` holds the epoch's device sums."""

    def on_epoch_trained(self, t: Any, epoch: int, record: dict[str, Any]) -> bool:
        """After training and validation; return True to discard the epoch."""
        return False

    def on_epoch_end(self, t: Any, epoch: int, record: dict[str, Any]) -> None:
        """After the epoch is kept: ``t.epoch`` is ``epoch + 1``, ``t.records`` has it."""

    def on_fit_exit(self, t: Any) -> None:
        """When the loop is left, normally or not."""

    def on_fit_end(self, t: Any) -> None:
        """After the loop ended without an interrupt (``t.epoch`` epochs done)."""
