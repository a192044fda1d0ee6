"""``freeze_encoder_epochs``: the encoder held fixed during the first pretraining epochs.

A pretrained encoder under a randomly initialised decoder gets large, noisy gradients
until the decoder has learned something; freezing it for the first N epochs keeps its
weights, and its BatchNorm statistics (eval mode), as they came. The state is a
function of the epoch index alone, so a resumed or rolled-back run freezes exactly as
an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from ... import distributed
from .base import Callback

__all__ = ["EncoderFreeze"]


class EncoderFreeze(Callback):
    """Freezes G's encoder before epochs ``< freeze_encoder_epochs``, releases it after."""

    def on_epoch_start(self, t: Any, epoch: int, phase: str) -> None:
        model = t.model
        if not hasattr(model, "freeze_encoder"):
            return
        frozen = epoch < t.cfg.freeze_encoder_epochs
        if bool(getattr(model, "encoder_frozen", False)) == frozen:
            return
        model.freeze_encoder(frozen)
        if t.ema is not None:  # its BatchNorm statistics stay those of the frozen encoder
            t.ema.module.encoder_frozen = frozen
        if t.world > 1:  # DDP records which parameters take gradients when it wraps
            t.g = distributed.wrap(model, t.device)
