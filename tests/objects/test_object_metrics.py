"""Object-level precision, recall and F1 at IoU 0.5; ``stainadapt evaluate --instances``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from objshapes import disc
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.data.io import write_image
from stainadapt.metrics import aggregate, match_objects, object_metrics_from_counts


def test_match_objects_iou_half():
    truth = np.zeros((20, 40), np.int32)
    truth[2:8, 2:8] = 1  # found exactly
    truth[2:8, 12:18] = 2  # found with IoU 20/36 < 0.5 ... see below
    truth[12:18, 2:8] = 3  # missed
    pred = np.zeros_like(truth)
    pred[2:8, 2:8] = 5
    pred[2:8, 14:20] = 7  # overlap 4 cols: IoU 24 / 48 = 0.5, not above
    pred[12:18, 30:36] = 9  # false positive
    counts = match_objects(pred, truth)
    assert counts == {"obj_tp": 1, "obj_fp": 2, "obj_fn": 2}
    pred[2:8, 14:20] = 0
    pred[2:8, 13:19] = 7  # IoU 30 / 42 > 0.5
    assert match_objects(pred, truth) == {"obj_tp": 2, "obj_fp": 1, "obj_fn": 1}
    m = object_metrics_from_counts(match_objects(pred, truth))
    assert m == pytest.approx({"obj_precision": 2 / 3, "obj_recall": 2 / 3, "obj_f1": 2 / 3})
    # a low threshold matches one-to-one, best IoU first
    both = np.zeros((10, 10), np.int32)
    both[:, :5], both[:, 5:] = 1, 2
    one = np.ones((10, 10), np.int32)
    assert match_objects(one, both, iou=0.3) == {"obj_tp": 1, "obj_fp": 0, "obj_fn": 1}


def test_empty_conventions_and_pooling():
    z = np.zeros((5, 5), np.int32)
    assert object_metrics_from_counts(match_objects(z, z)) == {
        "obj_precision": 1.0, "obj_recall": 1.0, "obj_f1": 1.0,
    }  # fmt: skip
    o = z.copy()
    o[1:3, 1:3] = 1
    assert object_metrics_from_counts(match_objects(z, o))["obj_recall"] == 0.0
    assert object_metrics_from_counts(match_objects(o, z))["obj_precision"] == 0.0
    base = {"dice": 1, "iou": 1, "accuracy": 1, "precision": 1, "recall": 1}
    base |= {"tp": 1, "fp": 0, "fn": 0, "tn": 1}
    rows = [
        {**base, "obj_tp": 2, "obj_fp": 0, "obj_fn": 0, "obj_precision": 1.0,
         "obj_recall": 1.0, "obj_f1": 1.0},
        {**base, "obj_tp": 0, "obj_fp": 2, "obj_fn": 0, "obj_precision": 0.0,
         "obj_recall": 1.0, "obj_f1": 0.0},
    ]  # fmt: skip
    agg = aggregate(rows)
    assert agg["mean"]["obj_f1"] == 0.5
    assert agg["pooled"]["obj_precision"] == 0.5 and agg["pooled"]["obj_f1"] == pytest.approx(2 / 3)


def test_evaluate_instances_cli(tmp_path):
    shape = (100, 160)
    pair = disc(shape, 50, 45, 25) | disc(shape, 50, 85, 25)  # touching pair, 2 objects
    lone = disc(shape, 50, 135, 12)
    truth = pair | lone
    pred = pair | disc(shape, 10, 140, 6)  # misses `lone`, adds a false positive
    for d, m in (("pred", pred), ("gt", truth)):
        write_image(tmp_path / d / "a.png", m)
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")]
    res = CliRunner().invoke(app, [*args, "--instances", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)["images"][0]
    assert (row["n_pred"], row["n_truth"]) == (3, 3)
    assert (row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (2, 1, 1)
    assert row["obj_f1"] == pytest.approx(2 / 3)
    # Without the split the pair is one object on both sides.
    res = CliRunner().invoke(app, [*args, "--instances", "--no-split", "--json"])
    row = json.loads(res.stdout)["images"][0]
    assert (row["n_pred"], row["n_truth"], row["obj_tp"]) == (2, 2, 1)
    res = CliRunner().invoke(app, [*args, "--instances"])
    assert res.exit_code == 0, res.output
    assert "glomeruli (matched at IoU > 0.5)" in res.stdout and "0.6667" in res.stdout
    res = CliRunner().invoke(app, [*args, "--instances", "--iou", "1.5"])
    assert res.exit_code == 2 and "--iou" in res.output
    res = CliRunner().invoke(app, [*args, "--json"])  # pixel metrics only, as before
    assert "obj_f1" not in json.loads(res.stdout)["pooled"]
