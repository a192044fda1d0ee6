"""Metrics on hand-made masks with known values; aggregation; folder pairing."""

from __future__ import annotations

import numpy as np
import pytest

from stainadapt.data.io import write_image
from stainadapt.errors import InputError
from stainadapt.metrics import (
    aggregate,
    confusion,
    evaluate_folders,
    metrics_from_counts,
    segmentation_metrics,
)


def _masks():
    # truth: 4x4 square (16 px); prediction: the same square shifted right by 2 (8 overlap)
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True
    pred = np.zeros((10, 10), bool)
    pred[2:6, 4:8] = True
    return pred, truth


def test_known_values():
    pred, truth = _masks()
    c = confusion(pred, truth)
    assert c == {"tp": 8, "fp": 8, "fn": 8, "tn": 76}
    m = segmentation_metrics(pred, truth)
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(8 / 24)
    assert m["accuracy"] == pytest.approx(0.84)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert segmentation_metrics(truth, truth)["dice"] == 1.0


def test_empty_conventions():
    empty = np.zeros((5, 5), bool)
    full = np.ones((5, 5), bool)
    assert segmentation_metrics(empty, empty) == {
        "dice": 1.0, "iou": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0,
    }  # fmt: skip
    missed = segmentation_metrics(empty, full)  # found nothing where all is foreground
    assert missed["dice"] == 0 and missed["precision"] == 0 and missed["recall"] == 0
    false_alarm = segmentation_metrics(full, empty)
    assert false_alarm["dice"] == 0 and false_alarm["recall"] == 0 and false_alarm["precision"] == 0


def test_shape_mismatch():
    with pytest.raises(InputError, match="shapes differ"):
        confusion(np.zeros((3, 3)), np.zeros((3, 4)))


def test_aggregate_mean_std_pooled():
    pred, truth = _masks()
    rows = []
    for p, t in [(pred, truth), (truth, truth)]:
        c = confusion(p, t)
        rows.append({**metrics_from_counts(c), **c})
    agg = aggregate(rows)
    assert agg["mean"]["dice"] == pytest.approx(0.75)
    assert agg["std"]["dice"] == pytest.approx(0.25)
    # pooled: tp 24, fp 8, fn 8 -> 48 / 64
    assert agg["pooled"]["dice"] == pytest.approx(0.75)
    assert agg["pooled"]["iou"] == pytest.approx(24 / 40)


def test_evaluate_folders_pairs_by_stem(tmp_path):
    pred, truth = _masks()
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    write_image(tmp_path / "p" / "a.png", pred)
    write_image(tmp_path / "g" / "a.png", truth)
    write_image(tmp_path / "p" / "b.tif", truth)  # TIFF prediction, PNG ground truth
    write_image(tmp_path / "g" / "b.png", truth)
    write_image(tmp_path / "g" / "c.png", truth)  # no prediction
    report = evaluate_folders(tmp_path / "p", tmp_path / "g")
    assert [r["name"] for r in report.images] == ["a", "b"]
    assert report.images[0]["dice"] == pytest.approx(0.5)
    assert report.mean["dice"] == pytest.approx(0.75)
    assert [p.name for p in report.unmatched_truths] == ["c.png"]
    d = report.as_dict()
    assert set(d) == {"images", "mean", "std", "pooled"}


def test_evaluate_folders_errors(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    write_image(tmp_path / "p" / "a.png", np.zeros((4, 4), bool))
    write_image(tmp_path / "g" / "z.png", np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="no prediction"):
        evaluate_folders(tmp_path / "p", tmp_path / "g")
    write_image(tmp_path / "g" / "a.png", np.zeros((5, 4), bool))
    with pytest.raises(InputError, match="differs from ground truth"):
        evaluate_folders(tmp_path / "p", tmp_path / "g")
    with pytest.raises(InputError, match="not a folder"):
        evaluate_folders(tmp_path / "nope", tmp_path / "g")
