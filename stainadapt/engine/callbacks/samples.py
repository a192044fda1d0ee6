"""``samples/``: overlays of the selected model on a few validation images per domain."""

from __future__ import annotations

from typing import Any

from ...errors import InputError
from ...inference.evaluate import load_domain_images, predict_probs
from ..report import write_overlay
from .base import Callback

__all__ = ["SampleOverlays"]


class SampleOverlays(Callback):
    """At the end of a finished run, ``cfg.samples`` overlays per domain (rank 0)."""

    def on_fit_end(self, t: Any) -> None:
        if not (t.main and t.finished) or t.cfg.samples <= 0:
            return
        from ...runs import load_model

        try:
            model, _ = load_model(t.run_dir, device=t.device)
        except InputError:  # pragma: no cover - model.safetensors always exists here
            model = t.eval_model
        folder = t.run_dir / "samples"
        for which, samples in (("source", t.domains.src_val), ("target", t.domains.tgt_val)):
            chosen = samples[: t.cfg.samples]
            if not chosen:
                continue
            for name, image, mask in load_domain_images(chosen, with_masks=True):
                prob = predict_probs(model, image, t.device, t.normalizer, t.amp)
                pred = (prob > t.cfg.threshold).cpu().numpy()
                write_overlay(folder / f"{which}_{name}.png", image, pred, mask)
