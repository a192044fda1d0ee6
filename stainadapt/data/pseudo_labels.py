"""Pseudo-labels with an "unsure" class: what self-training writes and reads back.

A model's guess on an unlabelled target image is right where it is confident and noise
where it is not. Training on every pixel of a guess teaches G its own mistakes; training
only on the confident pixels keeps the signal. Confidence alone is not enough either:
glomeruli are a few percent of a tile and the model is less sure of them than of the
background, so one global confidence cut keeps background and drops most glomerulus
pixels. The filter here is class-balanced (as in CBST, Zou et al. 2018): each class
(glomerulus: ``p > threshold``; background: the rest) keeps the same share ``keep`` of
its own pixels over the whole labelled split, its most confident ones; the others are
*unsure* and left out of the loss.

On disk a pseudo-label is an 8-bit PNG: 0 background, 255 glomerulus, :data:`UNSURE_PIXEL`
unsure. Read back for training (:func:`read_pseudo_label`) it is a float mask with 0, 1
and :data:`IGNORE` (negative), which the geometric augmentation carries like the other
values (nearest resampling) and :func:`stainadapt.engine.losses.seg_loss` leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import read_mask_values
from .resample import downsample_mask

__all__ = ["UNSURE_PIXEL", "IGNORE", "compact_probs", "class_balanced_cuts",
           "encode_pseudo_label", "read_pseudo_label", "downsample_pseudo_label"]

#: The stored value of an unsure pixel.
UNSURE_PIXEL = 128
#: The training mask's value of an unsure pixel (any negative value is unsure).
IGNORE = -1.0

_LEVELS = 256  # probabilities are counted in 1/255 steps (8-bit) for the quantiles


def _quantised(prob: np.ndarray) -> np.ndarray:
    """Probabilities in 8-bit steps; ``uint8`` input is taken as already in steps."""
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        return prob
    return np.clip(np.rint(prob.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _line(threshold: float) -> int:
    """The highest 8-bit step on the background side of ``threshold``."""
    return min(int(np.floor(threshold * 255.0)), 255)


def compact_probs(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(H, W) uint8``: ``p`` in 8-bit steps, one byte a pixel, kept on the side of
    ``threshold`` that ``p`` itself is on (so it labels as ``p`` does).

    What a labelling pass keeps of each image while it counts the cuts; the labels are
    then written from it (:func:`encode_pseudo_label` takes it as it is)."""
    prob = np.asarray(prob, dtype=np.float32)
    q = _quantised(prob)
    line = _line(threshold)
    fg = prob > threshold
    q[fg] = np.maximum(q[fg], min(line + 1, 255))
    q[~fg] = np.minimum(q[~fg], line)
    return q


def class_balanced_cuts(probs: Sequence[np.ndarray], threshold: float = 0.5,
                        keep: float = 1.0) -> tuple[float, float]:
    """``(fg_min, bg_max)``: a pixel is a sure glomerulus when ``p >= fg_min`` (and
    ``p > threshold``), sure background when ``p <= bg_max`` (and ``p <= threshold``).

    ``probs``: probabilities, or :func:`compact_probs` arrays (``uint8``). Each class
    keeps ``keep`` of its pixels over all of them (its most confident;
    ties at the cut are all kept, so a little more). ``keep = 1`` keeps every pixel:
    ``(0, 1)``. Counted on 8-bit probabilities, so memory does not grow with the split.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if keep >= 1.0:
        return 0.0, 1.0
    counts = np.zeros(_LEVELS, dtype=np.int64)
    for p in probs:
        counts += np.bincount(_quantised(p).ravel(), minlength=_LEVELS)
    levels = np.arange(_LEVELS) / 255.0
    fg = np.arange(_LEVELS) > _line(threshold)
    fg_min, bg_max = 1.0, 0.0
    if counts[fg].sum():  # from the most confident glomerulus level down
        fg_counts, fg_levels = counts[fg][::-1], levels[fg][::-1]
        k = int(np.searchsorted(np.cumsum(fg_counts), keep * fg_counts.sum()))
        fg_min = float(fg_levels[min(k, len(fg_levels) - 1)])
    if counts[~fg].sum():  # from the most confident background level up
        bg_counts, bg_levels = counts[~fg], levels[~fg]
        k = int(np.searchsorted(np.cumsum(bg_counts), keep * bg_counts.sum()))
        bg_max = float(bg_levels[min(k, len(bg_levels) - 1)])
    return fg_min, bg_max


def encode_pseudo_label(prob: np.ndarray, threshold: float = 0.5, fg_min: float = 0.0,
                        bg_max: float = 1.0) -> np.ndarray:
    """``(H, W) uint8``: 255 where ``p > threshold`` and ``p >= fg_min``, 0 where
    ``p <= threshold`` and ``p <= bg_max``, :data:`UNSURE_PIXEL` elsewhere.

    ``prob`` may be a :func:`compact_probs` array (``uint8``), whose side of the threshold
    it keeps. The cuts are compared in the 8-bit steps :func:`class_balanced_cuts`
    counts in."""
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        fg = prob > _line(threshold)
    else:
        prob = prob.astype(np.float32)
        fg = prob > threshold
    q = _quantised(prob).astype(np.float32) / 255.0
    out = np.full(q.shape, UNSURE_PIXEL, dtype=np.uint8)
    out[fg & (q >= fg_min - 1e-6)] = 255
    out[~fg & (q <= bg_max + 1e-6)] = 0
    return out


def read_pseudo_label(path: Path | str) -> np.ndarray:
    """A pseudo-label PNG -> ``(H, W) float32``: 0, 1, or :data:`IGNORE` (unsure)."""
    arr = read_mask_values(path)
    out = (arr > UNSURE_PIXEL).astype(np.float32)
    out[arr == UNSURE_PIXEL] = IGNORE
    return out


def downsample_pseudo_label(label: np.ndarray, downsample: float) -> np.ndarray:
    """:func:`downsample_mask` for a pseudo-label: a coarse pixel is unsure when half of
    its area is, else glomerulus when half of its area is."""
    if downsample == 1.0:
        return label
    unsure = downsample_mask(label < 0, downsample)
    out = downsample_mask(label > 0.5, downsample).astype(np.float32)
    out[unsure] = IGNORE
    return out
