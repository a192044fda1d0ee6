"""Segmentation metrics: Dice, IoU, pixel accuracy, precision, recall; per image and overall.

Conventions (a mask is a boolean array; TP/FP/FN/TN are pixel counts):

* ``dice = 2 TP / (2 TP + FP + FN)``, ``iou = TP / (TP + FP + FN)``,
  ``accuracy = (TP + TN) / N``, ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``.
* **Empty vs empty**: when neither the prediction nor the ground truth has a foreground
  pixel, Dice, IoU, precision and recall are all 1 (the prediction is perfect).
* A ratio whose denominator is 0 otherwise: precision with no predicted foreground is 1 if
  the ground truth is empty too, else 0; recall with an empty ground truth is 1 if nothing
  was predicted, else 0 (so an image can never score 1 for finding nothing when there was
  something, or for predicting something where there is nothing).
* **Aggregates**: ``mean`` and ``std`` over images (population std, ``ddof=0``; 0 for one
  image), and ``pooled``: the counts of all images summed, then the metrics computed once
  (large images weigh more).

Object level (``evaluate --instances``, the detection figures of the glomerulus
literature): both masks become instances (:func:`stainadapt.objects.label_instances`,
the same split of touching glomeruli for prediction and ground truth); a predicted
object matches a true one when their IoU exceeds ``iou`` (0.5: then a match is
necessarily one-to-one; lower thresholds match greedily, highest IoU first). Matched
pairs are TP, unmatched predictions FP, unmatched true objects FN;
``obj_precision = TP / (TP + FP)``, ``obj_recall = TP / (TP + FN)``,
``obj_f1 = 2 TP / (2 TP + FP + FN)``, with the same empty conventions as above
(no objects on either side: all 1). ``pooled`` sums the object counts of all images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "METRICS",
    "OBJECT_METRICS",
    "match_objects",
    "object_metrics_from_counts",
    "EvaluationReport",
    "aggregate",
    "confusion",
    "evaluate_folders",
    "evaluate_pairs",
    "metrics_from_counts",
    "segmentation_metrics",
]

METRICS = ("dice", "iou", "accuracy", "precision", "recall")
OBJECT_METRICS = ("obj_precision", "obj_recall", "obj_f1")


def confusion(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Pixel counts ``{"tp", "fp", "fn", "tn"}`` of two same-shaped masks (non-zero = 1)."""
    pred = np.asarray(pred).astype(bool, copy=False)
    truth = np.asarray(truth).astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise InputError(f"mask shapes differ: prediction {pred.shape}, ground truth {truth.shape}")
    tp = int(np.count_nonzero(pred & truth))
    p = int(np.count_nonzero(pred))
    t = int(np.count_nonzero(truth))
    return {"tp": tp, "fp": p - tp, "fn": t - tp, "tn": int(pred.size) - p - t + tp}


def metrics_from_counts(counts: dict[str, int]) -> dict[str, float]:
    """The five metrics of pixel counts, with the conventions of the module docstring."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    n = tp + fp + fn + tn
    union = tp + fp + fn
    return {
        "dice": 2 * tp / (2 * tp + fp + fn) if union else 1.0,
        "iou": tp / union if union else 1.0,
        "accuracy": (tp + tn) / n if n else 1.0,
        "precision": tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0),
        "recall": tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0),
    }


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, IoU, accuracy, precision, recall of one prediction against its ground truth."""
    return metrics_from_counts(confusion(pred, truth))


def match_objects(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> dict[str, int]:
    """Object counts ``{"obj_tp", "obj_fp", "obj_fn"}`` of two instance label images.

    Labels are integers, 0 background. A pair matches when its IoU is above ``iou``;
    each object matches at most once (highest IoU first).
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise InputError(f"mask shapes differ: prediction {pred.shape}, ground truth {truth.shape}")
    p_ids, p_area = np.unique(pred[pred > 0], return_counts=True)
    t_ids, t_area = np.unique(truth[truth > 0], return_counts=True)
    both = (pred > 0) & (truth > 0)
    tp = 0
    if both.any() and p_ids.size and t_ids.size:
        pairs, inter = np.unique(
            np.stack([truth[both].astype(np.int64), pred[both].astype(np.int64)]),
            axis=1,
            return_counts=True,
        )
        ta = t_area[np.searchsorted(t_ids, pairs[0])]
        pa = p_area[np.searchsorted(p_ids, pairs[1])]
        ious = inter / (ta + pa - inter)
        used_t: set[int] = set()
        used_p: set[int] = set()
        for k in np.argsort(-ious, kind="stable"):
            if ious[k] <= iou:
                break
            t, p = int(pairs[0, k]), int(pairs[1, k])
            if t not in used_t and p not in used_p:
                used_t.add(t)
                used_p.add(p)
                tp += 1
    return {"obj_tp": tp, "obj_fp": int(p_ids.size) - tp, "obj_fn": int(t_ids.size) - tp}


def object_metrics_from_counts(counts: dict[str, int]) -> dict[str, float]:
    """Object precision, recall and F1 of ``match_objects`` counts (module docstring)."""
    tp, fp, fn = counts["obj_tp"], counts["obj_fp"], counts["obj_fn"]
    return {
        "obj_precision": tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0),
        "obj_recall": tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0),
        "obj_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
    }


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"mean": .., "std": .., "pooled": ..}`` of per-image rows holding metrics and counts.

    Rows with object counts (``obj_tp`` ...) get the object metrics aggregated too.
    """
    if not rows:
        raise InputError("nothing to aggregate: no image pairs")
    names = METRICS + (OBJECT_METRICS if all("obj_tp" in r for r in rows) else ())
    mean = {k: float(np.mean([r[k] for r in rows])) for k in names}
    std = {k: float(np.std([r[k] for r in rows])) for k in names}
    counts = {k: int(sum(r[k] for r in rows)) for k in ("tp", "fp", "fn", "tn")}
    pooled = metrics_from_counts(counts)
    if len(names) > len(METRICS):
        obj = {k: int(sum(r[k] for r in rows)) for k in ("obj_tp", "obj_fp", "obj_fn")}
        pooled.update(object_metrics_from_counts(obj))
    return {"mean": mean, "std": std, "pooled": pooled}


@dataclass
class EvaluationReport:
    """Per-image rows (name, metrics, counts) and the aggregates; ``as_dict()`` for JSON."""

    images: list[dict[str, Any]]
    mean: dict[str, float]
    std: dict[str, float]
    pooled: dict[str, float]
    unmatched_predictions: list[Path] = field(default_factory=list)
    unmatched_truths: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "mean": self.mean, "std": self.std, "pooled": self.pooled}


def evaluate_pairs(
    pairs: Sequence[tuple[str, Path, Path]],
    threshold: float | None = None,
    instances: Any = None,
    iou: float = 0.5,
) -> EvaluationReport:
    """Evaluate ``(name, prediction, ground truth)`` mask files (read with ``read_mask``).

    ``instances``: an :class:`stainadapt.objects.InstanceOptions` to add the object-level
    metrics (IoU above ``iou``), or ``None`` for pixel metrics only.
    """
    from .data.io import read_mask

    if instances is not None and not 0.0 <= iou < 1.0:
        raise InputError(f"--iou {iou}: must be at least 0 and below 1")

    rows = []
    for name, pred_path, gt_path in pairs:
        pred = read_mask(pred_path, threshold=threshold)
        truth = read_mask(gt_path)
        if pred.shape != truth.shape:
            raise InputError(
                f"{pred_path}: size {pred.shape[0]}x{pred.shape[1]} differs from "
                f"ground truth {gt_path} ({truth.shape[0]}x{truth.shape[1]})"
            )
        counts = confusion(pred, truth)
        row = {"name": name, **metrics_from_counts(counts), **counts}
        if instances is not None:
            from .objects import label_instances

            p_lab, t_lab = label_instances(pred, instances), label_instances(truth, instances)
            obj = match_objects(p_lab, t_lab, iou)
            row.update(object_metrics_from_counts(obj))
            row.update(obj, n_pred=int(p_lab.max()), n_truth=int(t_lab.max()))
        rows.append(row)
    agg = aggregate(rows)
    return EvaluationReport(rows, agg["mean"], agg["std"], agg["pooled"])


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    from .data.io import MASK_EXTS

    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in MASK_EXTS:
            if p.stem in found:
                raise InputError(
                    f"{folder}: two masks named {p.stem!r} ({found[p.stem].name}, {p.name})"
                )
            found[p.stem] = p
    return found


def evaluate_folders(
    pred: str | Path,
    truth: str | Path,
    threshold: float | None = None,
    instances: Any = None,
    iou: float = 0.5,
) -> EvaluationReport:
    """Pair prediction and ground-truth masks by file stem and evaluate every pair.

    Predictions are binarised as ``value > threshold`` when ``threshold`` is given (for
    probability maps), else they must be two-valued masks like the ground truth. Files
    found on one side only are listed in the report (``unmatched_*``); no pair at all is
    an :class:`InputError`. ``instances`` and ``iou``: see :func:`evaluate_pairs`.
    """
    preds = _masks_by_stem(Path(pred))
    truths = _masks_by_stem(Path(truth))
    names = sorted(set(preds) & set(truths))
    if not names:
        raise InputError(
            f"no prediction in {pred} has a ground-truth mask of the same name in {truth} "
            f"({len(preds)} predictions, {len(truths)} masks)"
        )
    report = evaluate_pairs([(n, preds[n], truths[n]) for n in names], threshold, instances, iou)
    report.unmatched_predictions = [preds[n] for n in sorted(set(preds) - set(truths))]
    report.unmatched_truths = [truths[n] for n in sorted(set(truths) - set(preds))]
    return report
