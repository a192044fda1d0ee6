"""Whole-image evaluation: probabilities and Dice of labelled images, through the predictor.

Validation during training, the demo and the benchmarks score a model on whole images.
They go through the same :class:`.predictor.SlidingWindowPredictor` as ``predict``: the
window is the whole image (its longer side rounded up to the model's stride), padded
symmetrically, with no glass skipping and no test-time flips. So a validation score and
a prediction of the same image come from the same pixels. Dice and pixel accuracy come
from :func:`stainadapt.metrics.segmentation_metrics`.

With ``adapt`` (:mod:`.adapt`) a copy of the model adapts first and the caller's model
is left as it was. The sample is what the network sees here: whole images, each padded
to its evaluation window, up to ``windows`` of them (a seeded choice). Scope ``call``
adapts once to the images of the call, scope ``file`` to each image on its own.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.resample import downsample_image, model_downsample, scaled_shape
from ..metrics import segmentation_metrics
from .adapt import AdaptSettings, adapt_model
from .predictor import SlidingWindowPredictor

__all__ = ["adapted_copy", "evaluate_model", "load_domain_images", "predict_probs"]


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


def _whole_window(model: torch.nn.Module, image: np.ndarray) -> int:
    """The side of the square window a whole image is evaluated in (stride multiple),
    at the model's scale (``model.downsample``), at least two strides: G's deepest map
    is then 2 x 2 or more (instance normalisation needs more than one value)."""
    stride = int(getattr(model, "max_stride", 32) or 1)
    h, w = scaled_shape(image.shape[:2], model_downsample(model))
    return max(2 * stride, -(-max(h, w) // stride) * stride)


def adapted_copy(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    device: torch.device,
    adapt: str | AdaptSettings,
    normalizer: Any = None,
) -> torch.nn.Module:
    """A copy of ``model`` adapted (:mod:`.adapt`) to whole ``(H, W, 3) uint8`` images.

    Each image is padded to its evaluation window as :func:`predict_probs` pads it, then
    goes through the predictor's input path; at most ``windows`` images are used (a
    seeded choice). ``model`` itself is not changed. Returns the copy in eval mode.
    """
    settings = AdaptSettings.parse(adapt)
    adapted = copy.deepcopy(model).to(device).eval()
    if settings is not None and settings.mode == "target":  # no images needed
        adapt_model(adapted, [], settings, lambda x: x, device)
        return adapted
    if settings is None or not images:
        return adapted
    chosen = list(range(len(images)))
    if len(chosen) > settings.windows:
        rng = np.random.default_rng(settings.seed)
        chosen = sorted(rng.choice(len(images), settings.windows, replace=False).tolist())
    windows, tiles = [], []
    for i in chosen:  # each image indexed once: ``images`` may read it from disk
        full = images[i]
        image = downsample_image(full, model_downsample(model))
        tiles.append(_whole_window(model, full))
        h, w = image.shape[:2]
        padded = np.pad(image, ((0, tiles[-1] - h), (0, tiles[-1] - w), (0, 0)),
                        mode="symmetric")
        windows.append(torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1))
    prep = SlidingWindowPredictor(adapted, tiles[0], 0, device=device, amp="off",
                                  normalizer=normalizer)
    adapt_model(adapted, windows, settings, prep.model_input, device)
    return adapted


def predict_probs(
    model: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    normalizer: Any = None,
    amp: torch.dtype | None = None,
    adapt: str | AdaptSettings | None = None,
    tta: bool = False,
) -> torch.Tensor:
    """Probabilities ``(H, W) float32`` on ``device`` of one whole ``(H, W, 3) uint8`` image.

    ``amp``: the autocast dtype (``None``: full precision). The model is run in eval
    mode and left in the mode it came in. ``adapt`` (``"bn"``, ``"tent"`` or
    :class:`AdaptSettings`): a copy of the model adapts to this image first. ``tta``: the
    mean of the four flips' probabilities, as ``predict --tta``.
    """
    if AdaptSettings.parse(adapt) is not None:
        model = adapted_copy(model, [image], device, adapt, normalizer)
    tile = _whole_window(model, image)
    was_training = model.training
    try:
        predictor = SlidingWindowPredictor(
            model, tile, 0, batch_size=1, device=device, amp=amp, normalizer=normalizer,
            min_tissue=0.0, tta=tta,
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
    adapt: str | AdaptSettings | None = None,
    tta: bool = False,
) -> dict[str, float]:
    """Mean (and std) Dice and pixel accuracy of ``model`` over labelled images.

    ``items``: ``(name, image, mask)`` as :func:`load_domain_images` returns; items
    without a mask are skipped. Returns ``{"dice", "dice_std", "accuracy",
    "accuracy_std", "n"}``, or ``{}`` when no item has a mask. ``adapt``: evaluate a
    copy adapted at test time (module docstring); scope ``call`` adapts once to the
    labelled images, scope ``file`` to each image. ``tta``: score the mean of the four
    flips' probabilities (:func:`predict_probs`).
    """
    settings = AdaptSettings.parse(adapt)
    scored = [(image, mask) for _, image, mask in items if mask is not None]
    per_image: str | AdaptSettings | None = None
    if settings is not None and settings.scope == "call":
        model = adapted_copy(model, [image for image, _ in scored], device, settings,
                             normalizer)
    else:
        per_image = settings
    dices, accs = [], []
    for image, mask in scored:
        prob = predict_probs(model, image, device, normalizer, amp, per_image, tta)
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
