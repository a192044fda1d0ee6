"""Whole-image prediction and Dice / accuracy of a model over labelled images.

Training validates with these functions, the demo and the benchmarks score runs with
them, and self-training labels the target with :func:`predict_probs`. An image is
reflect-padded to a multiple of 32 (G's largest stride) and the padding is cropped off
the probabilities again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["load_domain_images", "predict_probs", "evaluate_model"]


def load_domain_images(samples: list[Any], with_masks: bool) -> list[tuple[str, np.ndarray, Any]]:
    """Read ``(name, image uint8 HxWx3, mask bool HxW or None)`` for evaluation."""
    from ..data.io import read_image, read_mask

    out = []
    for s in samples:
        mask = read_mask(s.mask) if (with_masks and s.mask is not None) else None
        out.append((s.name, read_image(s.image), mask))
    return out


def _dice_acc(pred: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Dice and pixel accuracy of two boolean maps (Dice = 1 when both are empty)."""
    pred, truth = pred.bool(), truth.bool()
    inter = (pred & truth).sum().item()
    total = pred.sum().item() + truth.sum().item()
    dice = 1.0 if total == 0 else 2.0 * inter / total
    acc = (pred == truth).float().mean().item()
    return dice, acc


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    normalizer: Any = None,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Probabilities ``(H, W)`` for one whole image (reflect-padded to a multiple of 32)."""
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0).to(device)
    if normalizer is not None:
        x = normalizer(x)
    x = x.float() / 255.0
    h, w = x.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = model(x)
    return torch.sigmoid(logits.float())[0, 0, :h, :w]


def evaluate_model(
    model: torch.nn.Module,
    items: list[tuple[str, np.ndarray, Any]],
    device: torch.device,
    threshold: float = 0.5,
    normalizer: Any = None,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean (and std) Dice and pixel accuracy of ``model`` over labelled images."""
    was_training = model.training
    model.eval()
    dices, accs = [], []
    for _, image, mask in items:
        if mask is None:
            continue
        prob = predict_probs(model, image, device, normalizer, amp)
        d, a = _dice_acc(prob > threshold, torch.from_numpy(mask).to(prob.device))
        dices.append(d)
        accs.append(a)
    model.train(was_training)
    if not dices:
        return {}
    return {
        "dice": float(np.mean(dices)),
        "dice_std": float(np.std(dices)),
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "n": len(dices),
    }
