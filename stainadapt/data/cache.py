"""The embedded default data set: synthetic PASM and Masson tiles cached once per user.

Location: ``$STAINADAPT_CACHE`` if set, else ``$XDG_CACHE_HOME/stainadapt``, else
``~/.cache/stainadapt``; inside it a versioned folder (``synth-v<version>-n<N>-s<size>
-seed<seed>``) holding ``pasm/`` and ``masson/``. It is generated into a temporary folder
next to it and renamed into place, so an interrupted generation never leaves a partial
data set behind, and two processes racing both end with the same complete folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .synth import SYNTH_VERSION, generate

__all__ = ["DEFAULT_N", "DEFAULT_SIZE", "cache_root", "default_dataset"]

#: Enough for a CPU demo to train in minutes: 48 tiles of 256 px per stain.
DEFAULT_N = 48
DEFAULT_SIZE = 256
DEFAULT_SEED = 0
STAINS = ("pasm", "masson")


def cache_root() -> Path:
    """The user's stainadapt cache folder (not created)."""
    env = os.environ.get("STAINADAPT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "stainadapt"


def default_dataset(
    n: int = DEFAULT_N,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Path of the cached synthetic data set (``pasm/`` and ``masson/``), made if absent."""
    root = cache_root()
    final = root / f"synth-v{SYNTH_VERSION}-n{n}-s{size}-seed{seed}"
    if (final / "README.txt").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        generate(tmp, stains=STAINS, n=n, size=size, seed=seed, progress=progress)
        readme = tmp / "README.txt"
        readme.write_text(readme.read_text().replace(str(tmp), str(final)))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "README.txt").is_file():  # pragma: no cover - unexpected
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
