"""Training callbacks: what happens around the fit loop, one concern per module."""

from __future__ import annotations

from .base import Callback
from .checksum import ChecksumWriter
from .diagnostics import AdversarialDiagnostics
from .freeze import EncoderFreeze
from .guard import DivergenceGuard, SkipCounter
from .progress import ProgressBars
from .run_writer import RunWriter
from .samples import SampleOverlays
from .self_training import SelfTraining

__all__ = ["AdversarialDiagnostics", "Callback", "ChecksumWriter", "DivergenceGuard",
           "EncoderFreeze", "ProgressBars", "RunWriter", "SampleOverlays", "SelfTraining",
           "SkipCounter", "default_callbacks"]


def default_callbacks() -> list[Callback]:
    """Every run's callbacks, in the order their hooks run.

    Progress first (the epoch's bar exists before self-training adds its labelling bar),
    self-training before the guard (a round's summary joins the epoch's record), the
    diagnostics before the guard (they measure the epoch's networks, before a rollback
    restores earlier ones), the run-folder writer before the overlays (they read the
    saved model).
    """
    return [ProgressBars(), EncoderFreeze(), SelfTraining(), AdversarialDiagnostics(),
            DivergenceGuard(), RunWriter(), SampleOverlays(), ChecksumWriter()]
