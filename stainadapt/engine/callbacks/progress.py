"""Progress bars (rank 0, a terminal only): one bar per epoch, one per labelling pass.

The epoch's bar shows the running mean loss (read from the device every 10 steps only,
so the bar costs no host sync on the others) and, when the epoch is kept, its
validation Dice. Other callbacks add bars of their own through ``t.progress``.
"""

from __future__ import annotations

from typing import Any

from .base import Callback

__all__ = ["ProgressBars", "val_text"]


def val_text(val: dict[str, dict[str, float]]) -> str:
    """`` source dice 0.812 target dice 0.640`` for a bar's description."""
    return "".join(f" {k} dice {v['dice']:.3f}" for k, v in val.items() if "dice" in v)


class ProgressBars(Callback):
    """A rich Progress on ``t.console`` while ``fit`` runs, when ``t.show_progress``."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.description = ""

    def on_fit_start(self, t: Any) -> None:
        if not t.show_progress:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                                 TimeElapsedColumn(), console=t.console, transient=False)
        self.progress.start()
        t.progress = self.progress

    def on_epoch_start(self, t: Any, epoch: int, phase: str) -> None:
        if self.progress is None:
            return
        self.description = f"epoch {epoch + 1}/{len(t.phases)} {phase}"
        self.task = self.progress.add_task(self.description, total=t.steps, loss="")

    def on_step_end(self, t: Any, step: int, acc: dict[str, Any]) -> None:
        if self.progress is None:
            return
        if step % 10 == 9 or step == t.steps - 1:  # a sync every 10 steps only
            desc = ""
            key = "g_total" if "g_total" in acc else next(
                (k for k in acc if k.startswith("d_")), None)
            g = acc.get(key) if key else None
            if g is not None:
                desc = f" loss {float(g) / (step + 1):.4f}"
            self.progress.update(self.task, advance=1, loss=desc)
        else:
            self.progress.update(self.task, advance=1)

    def on_epoch_end(self, t: Any, epoch: int, record: dict[str, Any]) -> None:
        if self.progress is None:
            return
        # this epoch's own bar: another callback may have added bars after it
        self.progress.update(self.task, description=self.description + val_text(record["val"]))

    def on_fit_exit(self, t: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
        t.progress = None
