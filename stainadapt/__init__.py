"""stainadapt: cross-stain glomerulus segmentation with multi-level adversarial learning.

Train, predict and evaluate from Python (imported lazily, so ``import stainadapt`` stays
cheap)::

    import stainadapt
    cfg = stainadapt.training_config(source="data/pasm", target="data/masson", mode="uda",
                                     discs=["mirrored", "shape"], out="runs/exp")
    result = stainadapt.train(cfg)                                # engine.trainer.train
    stainadapt.predict(["slides/"], result.run_dir, "masks/")     # inference.predict_paths
    report = stainadapt.evaluate("masks/", "data/masson/masks")   # metrics.evaluate_folders

Plugins: :func:`create` builds one from a spec, :func:`register` adds one from a script
or notebook without packaging it::

    norm = stainadapt.create("normalizers", "macenko")
    disc = stainadapt.create("discriminators", "single:layer=f9", feature_table)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import InputError, PluginError, RunFailure, StainadaptError
from .registry import create, list_plugins, parse_spec, register
from .version import __version__

# name -> (module, attribute): imported on first use (torch, timm, ... load only then)
_LAZY = {
    "TrainConfig": ("stainadapt.config", "TrainConfig"),
    "training_config": ("stainadapt.recipes", "training_config"),
    "train": ("stainadapt.engine.trainer", "train"),
    "resume": ("stainadapt.engine.trainer", "resume"),
    "predict": ("stainadapt.inference", "predict_paths"),
    "evaluate": ("stainadapt.metrics", "evaluate_folders"),
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .config import TrainConfig
    from .engine.trainer import resume, train
    from .inference import predict_paths as predict
    from .metrics import evaluate_folders as evaluate
    from .recipes import training_config


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stainadapt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "TrainConfig",
    "training_config",
    "train",
    "resume",
    "predict",
    "evaluate",
    "create",
    "register",
    "list_plugins",
    "parse_spec",
    "StainadaptError",
    "InputError",
    "PluginError",
    "RunFailure",
]
