"""Whole-image evaluation: probabilities and Dice of labelled images, through the predictor.

Validation during training, the demo and the benchmarks score a model on whole images.
They go through the same :class:`.predictor.SlidingWindowPredictor` as ``predict``: the
window is the whole image (its longer side rounded up to the model's stride), padded
symmetrically, with no glass skipping and no test-time flips. So a validation score and
a prediction of the same image come from the same pixels. Dice and pixel accuracy come
from :func:`stainadapt.metrics.segmentation_metrics`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..metrics import segmentation_metrics
from .predictor import SlidingWindowPredictor

__all__ = ["evaluate_model", "load_domain_images", "predict_probs"]


def load_domain_images(samples: list[Any], with_masks: bool) -> list[tuple[str, np.ndarray, Any]]:
    """Read ``(name, image uint8 HxWx3, mask bool HxW or None)`` for evaluation.

    ``samples``: items with ``name``, ``image`` and ``mask`` (path or ``None``), as
    :func:`stainadapt.data.folders.scan_domain` lists them.
    """
    from ..data.io import read_image, read_mask

    out = []
    for s in samples:
        mask = read_mask(s.mask) if (with_masks and s.mask is not None) else None
        out.append((s.name, read_image(s.image), mask))
    return out


def predict_probs(
    model: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    normalizer: Any = None,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Probabilities ``(H, W) float32`` on ``device`` of one whole ``(H, W, 3) uint8`` image.

    ``amp``: the autocast dtype (``None``: full precision). The model is run in eval
    mode and left in the mode it came in.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    stride = int(getattr(model, "max_stride", 32) or 1)
    tile = -(-max(height, width) // stride) * stride
    was_training = model.training
    try:
        predictor = SlidingWindowPredictor(
            model, tile, 0, batch_size=1, device=device, amp=amp, normalizer=normalizer,
            min_tissue=0.0,
        )  # fmt: skip
        prob = predictor.predict(np.ascontiguousarray(image))
    finally:
        model.train(was_training)
    return torch.from_numpy(prob).to(device)


def evaluate_model(
    model: torch.nn.Module,
    items: list[tuple[str, np.ndarray, Any]],
    device: torch.device,
    threshold: float = 0.5,
    normalizer: Any = None,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean (and std) Dice and pixel accuracy of ``model`` over labelled images.

    ``items``: ``(name, image, mask)`` as :func:`load_domain_images` returns; items
    without a mask are skipped. Returns ``{"dice", "dice_std", "accuracy",
    "accuracy_std", "n"}``, or ``{}`` when no item has a mask.
    """
    dices, accs = [], []
    for _, image, mask in items:
        if mask is None:
            continue
        prob = predict_probs(model, image, device, normalizer, amp)
        scores = segmentation_metrics((prob > threshold).cpu().numpy(), mask)
        dices.append(scores["dice"])
        accs.append(scores["accuracy"])
    if not dices:
        return {}
    return {
        "dice": float(np.mean(dices)),
        "dice_std": float(np.std(dices)),
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "n": len(dices),
    }
