"""Ctrl-C and SIGTERM while training: stop at once, but never in the middle of a write.

Both raise KeyboardInterrupt at once, except while :func:`hold_interrupts` holds them
during an epoch boundary's writes: a signal in the middle of those would abandon the
epoch's ``state.pt`` (atomic: the previous one stays) after ``metrics.jsonl`` already has
the epoch, and the message would name the wrong epoch. Held, the writes finish and the
interrupt is raised on release.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["hold_interrupts", "sigterm_as_interrupt"]

# While an epoch boundary's files are written, SIGINT/SIGTERM are noted, not raised.
_HOLD = {"active": False, "on": False, "pending": False}


def hold_interrupts(on: bool) -> None:
    """Hold back (``True``) or release SIGINT/SIGTERM inside :func:`sigterm_as_interrupt`.

    Release raises KeyboardInterrupt if a signal came while held. Without an active
    guard this does nothing.
    """
    if not _HOLD["active"]:
        return
    _HOLD["on"] = on
    if not on and _HOLD["pending"]:
        _HOLD["pending"] = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C inside this block (main thread only)."""
    if threading.current_thread() is not threading.main_thread() or _HOLD["active"]:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if _HOLD["on"]:
            _HOLD["pending"] = True
            return
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _HOLD.update(active=True, on=False, pending=False)
    try:
        yield
    finally:
        _HOLD.update(active=False, on=False, pending=False)
        for sig, old in previous.items():
            signal.signal(sig, old)
