"""Debug (``STAINADAPT_DDP_CHECKSUM=1``): ``rank{r}.checksum`` of G + D parameters.

The one file a non-zero rank writes: it lets a test check that data-parallel training
kept every replica bit-identical.
"""

from __future__ import annotations

import os
from typing import Any

from ... import distributed
from ...atomic import atomic_write_text
from .base import Callback

__all__ = ["ChecksumWriter"]


class ChecksumWriter(Callback):
    """At the end of ``fit`` (every rank), when the environment variable is set."""

    def on_fit_end(self, t: Any) -> None:
        if not os.environ.get(distributed.CHECKSUM_ENV):
            return
        t.run_dir.mkdir(parents=True, exist_ok=True)
        digest = distributed.parameter_digest([t.model, *t.discs])
        atomic_write_text(t.run_dir / f"rank{t.rank}.checksum", digest)
