"""Keep a long prediction's resident memory at what it uses, not what it once used.

glibc's ``malloc`` serves a large block from ``mmap`` (returned to the system when
freed) only above a threshold that it raises, up to 32 MiB, each time such a block is
freed. Prediction frees blocks of a few MiB to tens of MiB all the time (the model's
activations, a band of pixels, its blended rows), so after the first few the threshold
sits above them: they are carved from the heap instead, whose freed pieces are kept
and fragment, and a slide's peak RSS climbs by hundreds of MiB over the run (measured
in ``benchmarks/RESULTS.md``, Memory). :func:`limit_heap_growth` pins the threshold at
:data:`MMAP_THRESHOLD`: blocks that large always come from ``mmap`` and go back when
freed, and :func:`release_free_memory` (after each band of windows) hands the heap's
free pages back. Elsewhere (macOS, Windows, musl) both do nothing.

A lower threshold keeps less still (4 MiB: 1229 MB against 1401 MB on a 3072 px
slide) but makes every activation of a CPU forward a fresh ``mmap``, 30 % slower; at
32 MiB the forward runs at full speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["MMAP_THRESHOLD", "limit_heap_growth", "release_free_memory"]

#: Bytes from which glibc allocates with ``mmap``, once :func:`limit_heap_growth` ran.
MMAP_THRESHOLD = 32 * 2**20
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_done = False
_libc: ctypes.CDLL | None = None


def limit_heap_growth() -> bool:
    """Pin glibc's mmap threshold (module docstring); ``True`` when it is set.

    Process-wide and idempotent; an explicit ``MALLOC_MMAP_THRESHOLD_`` in the
    environment is left as it is.
    """
    global _done, _libc
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    _libc = libc if _done and hasattr(libc, "malloc_trim") else None
    return _done


def release_free_memory() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``), once
    :func:`limit_heap_growth` ran; otherwise nothing. About a millisecond."""
    if _libc is not None:
        _libc.malloc_trim(0)
