"""Atomic file writes: a file is replaced whole or not at all.

The bytes go to a temporary file in the target's folder, are flushed to disk
(``fsync``), then renamed over the target with ``os.replace``; a process killed
mid-write leaves the old file or the new one, never half of one. Every file the
library writes (run folders, masks, object tables, pictures) goes through here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text"]


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Write ``path`` atomically: ``writer(tmp_path)`` writes a temporary file, then rename.

    The temporary file lives in the same folder (so ``os.replace`` is a rename on one file
    system) and keeps the target's suffix, so writers that pick a format by suffix
    (Pillow, tifffile) behave as for the real name. On any error the temporary file is
    removed and the target is left as it was. Returns ``path`` as a :class:`Path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = target.with_name(f".{target.stem}.tmp-{token}{target.suffix}")
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_save`)."""
    return atomic_save(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_save`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
