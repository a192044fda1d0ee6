"""``stainadapt evaluate`` through the real root app: table and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.data.io import write_image


@pytest.fixture
def folders(tmp_path):
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True
    shifted = np.zeros((10, 10), bool)
    shifted[2:6, 4:8] = True
    for d in ("pred", "gt"):
        (tmp_path / d).mkdir()
    write_image(tmp_path / "pred" / "x.png", shifted)  # Dice 0.5
    write_image(tmp_path / "gt" / "x.png", truth)
    write_image(tmp_path / "pred" / "y.png", truth)  # Dice 1
    write_image(tmp_path / "gt" / "y.png", truth)
    write_image(tmp_path / "pred" / "e.png", np.zeros((10, 10), bool))  # empty vs empty
    write_image(tmp_path / "gt" / "e.png", np.zeros((10, 10), bool))
    return tmp_path


def test_json(folders):
    res = CliRunner().invoke(
        app, ["evaluate", str(folders / "pred"), str(folders / "gt"), "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"images", "mean", "std", "pooled"}
    dice = {r["name"]: r["dice"] for r in data["images"]}
    assert dice == {"e": 1.0, "x": 0.5, "y": 1.0}
    assert data["mean"]["dice"] == pytest.approx(2.5 / 3)
    assert data["pooled"]["dice"] == pytest.approx(48 / 64)
    assert set(data["std"]) == {"dice", "iou", "accuracy", "precision", "recall"}


def test_table(folders):
    res = CliRunner().invoke(app, ["evaluate", str(folders / "pred"), str(folders / "gt")])
    assert res.exit_code == 0, res.output
    assert "mean ± std" in res.stdout and "pooled" in res.stdout and "0.5000" in res.stdout


def test_no_pairs(folders, tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "empty"), str(folders / "gt")])
    assert res.exit_code == 2 and "no prediction" in res.output
