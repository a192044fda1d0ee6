"""Test-time adaptation in ``stainadapt predict``: scopes, files beside the masks, torchrun.

:class:`PredictAdaptation` drives :mod:`.adapt` for :func:`.paths.predict_paths`:

* scope ``call`` (the default): one sample over every input of the call, one set of
  statistics for all of them, written to ``OUT/adapted-stats.safetensors``. The sample
  covers every input, whether or not its output exists already, so a resumed call
  adapts as the first one did.
* scope ``file``: each input adapts to a sample of its own windows before it is
  predicted, and the model goes back to its trained state afterwards; the statistics go
  to ``OUT/<stem>.adapted.safetensors``.
* ``--adapt target``: the target statistics a model trained with ``--target-statistics``
  kept (``target-stats.safetensors`` in its run folder), for every input; nothing is
  estimated or written.
* ``--adapted-stats FILE``: the statistics of an earlier call are loaded once and used
  for every input, whatever the scope; nothing is estimated or written.

Under torchrun every rank must predict with the same statistics, or a file would get a
different mask on two ranks. For scope ``call`` (and for a slide the ranks share, scope
``file``) rank 0 estimates and broadcasts the tensors; a file one rank predicts alone is
adapted by that rank. A model without BatchNorm layers has nothing to adapt: one note
says so and the prediction is the unadapted one. After the call, rank 0 writes
``OUT/predict.json`` with the model and the adaptation settings; ``stainadapt evaluate``
prints them (:func:`read_predict_manifest`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..atomic import atomic_write_text
from ..data.resample import model_downsample
from .adapt import (
    AdaptSettings,
    adapt_model,
    adapted_state,
    apply_adapted_state,
    kept_target_statistics,
    read_adapted_state,
    sample_windows,
    save_adapted_state,
)
from .predictor import SlidingWindowPredictor

__all__ = ["CALL_STATS", "MANIFEST", "PredictAdaptation", "describe_manifest", "file_stats",
           "read_predict_manifest", "write_predict_manifest"]

#: Statistics of scope ``call``, in the output folder.
CALL_STATS = "adapted-stats.safetensors"
#: The settings of the last adapted prediction into an output folder.
MANIFEST = "predict.json"
#: ``loaded`` for ``--adapt target``: the statistics came with the model.
KEPT = Path("<target statistics kept in training>")


def file_stats(out: Path, stem: str) -> Path:
    """Where scope ``file`` keeps the statistics of input ``stem``."""
    return out / f"{stem}.adapted.safetensors"


class PredictAdaptation:
    """The adaptation of one :func:`predict_paths` call (see the module docstring).

    Built by :meth:`create`; :meth:`start` before the first file, :meth:`before_file` /
    :meth:`after_file` around each one. ``notes`` collects what the report should say;
    ``summary`` is what ``predict.json`` records.
    """

    def __init__(self, predictor: SlidingWindowPredictor, settings: AdaptSettings,
                 out: Path, min_tissue: float, stream_min_pixels: int,
                 progress: Callable[[str, int, int], None] | None,
                 mpp: tuple[float | None, float | None] = (None, None)) -> None:
        self.predictor, self.settings, self.out = predictor, settings, out
        self.model = predictor.model
        self.min_tissue, self.stream_min_pixels = min_tissue, stream_min_pixels
        self.mpp = mpp
        self.progress = progress
        self.notes: list[str] = []
        self.loaded: Path | None = None
        self.summary: dict[str, Any] = settings.describe()
        self._trained = adapted_state(self.model, "tent")
        self._adapted_files = 0
        self._sample = 0

    @classmethod
    def create(cls, predictor: SlidingWindowPredictor, settings: AdaptSettings,
               stats_file: str | Path | None, out: Path, min_tissue: float,
               stream_min_pixels: int,
               progress: Callable[[str, int, int], None] | None = None,
               mpp: tuple[float | None, float | None] = (None, None),
               ) -> tuple[PredictAdaptation | None, list[str]]:
        """The adaptation to run, or ``None`` and a note when there is nothing to adapt.

        ``mpp``: ``(the model's resolution, predict --mpp)``, so that the sample reads
        slides at the scale their prediction reads them.

        ``stats_file`` is read (and checked against the model) here, on every rank:
        a file that does not fit is an :class:`InputError` before any prediction.
        """
        if settings.mode == "none" and stats_file is None:
            return None, []
        model = predictor.model
        if stats_file is None and settings.mode != "target" and not adapted_state(model, "bn"):
            return None, ["the model has no BatchNorm layers (its normalisation is per "
                          f"image): nothing to adapt, --adapt {settings.mode} is ignored"]
        self = cls(predictor, settings, out, min_tissue, stream_min_pixels, progress, mpp)
        if stats_file is None and settings.mode == "target":
            apply_adapted_state(model, kept_target_statistics(model))
            self.loaded = KEPT
            self.summary = {"mode": "target", "scope": "trained",
                            "statistics": "target-stats.safetensors of the model"}
        elif stats_file is not None:
            state, meta = read_adapted_state(stats_file, model)
            apply_adapted_state(model, state)
            self.loaded = Path(stats_file)
            self.summary = {"mode": meta.get("mode", "bn"), "scope": "loaded",
                            "statistics": str(self.loaded.resolve()),
                            "estimated": {k: v for k, v in meta.items() if k != "sources"}}
        return self, []

    # -- scope call --------------------------------------------------------------------

    def start(self, files: list[Path]) -> None:
        """Scope ``call``: estimate (rank 0) over every input, share, save the file."""
        if self.loaded is not None or self.settings.scope != "call":
            return
        state = self._estimate_shared(files, "the inputs")
        if state is not None:
            self.summary.update(statistics=CALL_STATS, sample=self._sample)
            if distributed.is_main():
                self._save(self.out / CALL_STATS, state, files)
            self.notes.append(f"adapted the model to the inputs ({self.settings.mode}, "
                              f"{self._sample} window(s)); statistics in "
                              f"{self.out / CALL_STATS}")

    # -- scope file --------------------------------------------------------------------

    def before_file(self, path: Path, shared: bool) -> None:
        """Scope ``file``: adapt to ``path`` (rank 0 for a slide the ranks share)."""
        if self.loaded is not None or self.settings.scope != "file":
            return
        if shared:
            state = self._estimate_shared([path], path.name)
            writer = distributed.is_main()
        else:
            state = self._estimate([path])
            writer = True
        if state is None:
            return
        self._adapted_files += 1
        self.summary["statistics"] = "<stem>.adapted.safetensors"
        if writer:
            self._save(file_stats(self.out, path.stem), state, [path])

    def after_file(self) -> None:
        """Scope ``file``: back to the trained statistics (and affine terms)."""
        if self.loaded is None and self.settings.scope == "file":
            apply_adapted_state(self.model, self._trained)

    def finish_notes(self) -> list[str]:
        """The notes for the report (scope ``file`` adds how many inputs were adapted)."""
        notes = list(self.notes)
        if self.loaded is KEPT:
            notes.append("used the target statistics the model kept in training")
        elif self.loaded is not None:
            notes.append(f"used the adapted statistics of {self.loaded}")
        elif self.settings.scope == "file" and self._adapted_files:
            notes.append(f"adapted the model to each of {self._adapted_files} input(s) "
                         f"({self.settings.mode}); statistics in "
                         f"{self.out}/<name>.adapted.safetensors")
        return notes

    # -- internals ---------------------------------------------------------------------

    def _estimate(self, paths: list[Path]) -> dict[str, torch.Tensor] | None:
        """Sample ``paths``, adapt the model in place; its new tensors (``None``: no sample)."""
        p = self.predictor
        windows, notes = sample_windows(paths, p.tile, self.settings.windows,
                                        self.settings.seed, self.min_tissue,
                                        self.stream_min_pixels, *self.mpp,
                                        model_downsample=model_downsample(p.model))
        self.notes.extend(notes)
        if len(windows) == 0:
            names = paths[0].name if len(paths) == 1 else "the inputs"
            self.notes.append(f"{names}: no tissue window to adapt to, predicted without "
                              "adaptation")
            return None
        self._sample = len(windows)
        batch = torch.from_numpy(windows).permute(0, 3, 1, 2)
        adapt_model(self.model, batch, self.settings, p.model_input, p.device, self.progress)
        return adapted_state(self.model, self.settings.mode)

    def _estimate_shared(self, paths: list[Path], what: str) -> dict[str, torch.Tensor] | None:
        """:meth:`_estimate` on rank 0, its tensors and notes on every rank."""
        if not distributed.is_active():
            return self._estimate(paths)
        payload: tuple[Any, list[str], int, str | None] = (None, [], 0, None)
        if distributed.is_main():
            before = len(self.notes)
            try:
                state = self._estimate(paths)
                payload = (state, self.notes[before:], self._sample, None)
            except Exception as exc:
                payload = (None, [], 0, f"{type(exc).__name__}: {exc}".splitlines()[0])
        state, notes, sample, error = distributed.broadcast_object(payload)
        if error is not None:
            raise RuntimeError(f"adapting to {what} failed on rank 0: {error}")
        if not distributed.is_main():
            self.notes.extend(notes)
            self._sample = sample
            if state is not None:
                apply_adapted_state(self.model, state)
        return state

    def _save(self, path: Path, state: dict[str, torch.Tensor], sources: list[Path]) -> None:
        meta = {**self.settings.describe(), "sample": self._sample,
                "sources": [s.name for s in sources]}
        save_adapted_state(path, state, meta)


def write_predict_manifest(out: Path, model: str | Path, adapt: dict[str, Any]) -> Path:
    """``OUT/predict.json``: the model and the adaptation of the masks in ``out``."""
    text = json.dumps({"model": str(Path(model).resolve()), "adapt": adapt}, indent=1)
    return atomic_write_text(out / MANIFEST, text + "\n")


def read_predict_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The ``predict.json`` of a folder of masks (or of its parent, for ``probabilities/``).

    ``None`` when there is none or it cannot be read (it only annotates a report).
    """
    folder = Path(folder)
    for candidate in (folder / MANIFEST, folder.parent / MANIFEST):
        if candidate.is_file() and (candidate.parent == folder or folder.name == "probabilities"):
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None
    return None


def describe_manifest(manifest: dict[str, Any]) -> str:
    """One line for a report: how the predictions were adapted."""
    adapt = manifest.get("adapt") or {}
    mode = adapt.get("mode", "none")
    if mode == "none":
        return "predictions: not adapted at test time"
    if adapt.get("scope") == "trained":
        return "predictions: with the target statistics the model kept in training (target)"
    if adapt.get("scope") == "loaded":
        return f"predictions: adapted at test time ({mode}, statistics {adapt.get('statistics')})"
    windows = adapt.get("windows")
    if adapt.get("sample") is not None and adapt.get("sample") != windows:
        windows = f"{adapt['sample']} of {windows}"
    parts = [f"scope {adapt.get('scope')}", f"{windows} windows", f"seed {adapt.get('seed')}"]
    if mode == "tent":
        parts.append(f"{adapt.get('steps')} steps")
    return f"predictions: adapted at test time ({mode}, {', '.join(parts)})"
