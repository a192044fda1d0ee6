"""Resumable training state (``state.pt``).

Holds G, every discriminator, every optimiser, the epoch reached, the best validation
score so far and the RNG states. It is written with ``torch.save`` through
:func:`~stainadapt.atomic.atomic_save` and read back with
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists, tuples and dicts
are stored (the numpy RNG state is converted to a tensor), so loading it runs no code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_save
from ..errors import InputError

__all__ = ["STATE_FILE", "save_state", "load_state", "rng_state", "set_rng_state"]

STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tuplify(v) for v in value)
    return value


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically with ``torch.save``."""
    return atomic_save(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a ``state.pt`` with ``weights_only=True`` (InputError naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a state file
        raise InputError(
            f"{path}: unreadable training state ({type(exc).__name__}: {exc})"
        ) from None
