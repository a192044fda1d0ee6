"""The run folder: ``config.toml``, ``state.pt``, ``metrics.jsonl``, the model, curves.

Rank 0 alone writes. Every write is atomic (temp file + rename): ``state.pt`` after each
epoch is the boundary a resumed or rolled-back run continues from, and a killed run never
leaves a half-written file.
"""

from __future__ import annotations

import json
from typing import Any

from ...atomic import atomic_write_text
from ...config import dumps_toml
from ...runs import save_model
from ..report import write_curves
from ..state import STATE_FILE, save_state
from .base import Callback

__all__ = ["RunWriter", "write_metrics", "CONFIG_FILE", "METRICS_FILE"]

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"


def write_metrics(t: Any) -> None:
    """One line per epoch; a rollback event goes just before the epoch it retried."""
    rows: list[dict[str, Any]] = []
    events = sorted(t.events, key=lambda e: e["epoch"])
    for record in t.records:
        while events and events[0]["epoch"] <= record["epoch"]:
            rows.append(events.pop(0))
        rows.append(record)
    rows.extend(events)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write_text(t.run_dir / METRICS_FILE, text)


def save_target_statistics(t: Any) -> None:
    """``target-stats.safetensors`` beside the model, when the run keeps target statistics.

    Written with the model it belongs to (the selected epoch's), so the two always match.
    Until the first target batch there are none, and no file.
    """
    kept = t.model.target_statistics
    if not kept:
        return
    from ...inference.adapt import adapted_state, save_adapted_state
    from ...runs import TARGET_STATS

    # a layer no target batch reached (a frozen one) keeps G's own statistics
    state = {**adapted_state(t.model, "bn"), **{k: v.detach().cpu() for k, v in kept.items()}}
    save_adapted_state(t.run_dir / TARGET_STATS, state,
                       {"mode": "target", "target": str(t.cfg.target)})


class RunWriter(Callback):
    """Writes the run folder at the start, at every kept epoch and at the end."""

    def on_fit_start(self, t: Any) -> None:
        if not t.main:
            return
        t.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(t.run_dir / CONFIG_FILE, dumps_toml(t.cfg))
        if t.epoch == 0:
            save_state(t.run_dir / STATE_FILE, t.state_dict())

    def on_epoch_end(self, t: Any, epoch: int, record: dict[str, Any]) -> None:
        if not t.main:
            return
        if record["selected"]:
            save_model(t.run_dir, t.eval_model, t.meta())
            save_target_statistics(t)
        write_metrics(t)
        save_state(t.run_dir / STATE_FILE, t.state_dict())
        write_curves(t.run_dir / "curves.png", t.records)

    def on_fit_end(self, t: Any) -> None:
        # no epoch of the last phase ran (0 epochs): the model is G as it stands
        if t.main and t.finished and t.best_epoch is None:
            save_model(t.run_dir, t.eval_model, t.meta())
            save_target_statistics(t)
