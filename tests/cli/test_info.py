"""``stainadapt info``: JSON keys, the table, and one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from stainadapt.cli.app import app

runner = CliRunner()
ARGS = ["info", "--backbone", "resnet18", "--image-size", "64"]


def test_info_json_keys():
    result = runner.invoke(
        app, [*ARGS, "--disc", "mirrored", "--disc", "single:layer=f9", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {"generator", "discriminators", "features"}
    assert isinstance(data["generator"]["params"], int) and data["generator"]["gflops"] > 0
    assert set(data["discriminators"]) == {"mirrored", "single:layer=f9"}
    for d in data["discriminators"].values():
        assert isinstance(d["params"], int) and d["gflops"] > 0
    assert list(data["features"]) == [f"f{i}" for i in range(10)]
    assert data["features"]["f4"] == [512, 2, 2] and data["features"]["f9"] == [16, 64, 64]


def test_info_table():
    result = runner.invoke(app, [*ARGS, "--disc", "shape"])
    assert result.exit_code == 0, result.output
    assert "G (resnet18)" in result.stdout and "shape" in result.stdout and "f9" in result.stdout


def test_info_bad_size_is_one_line():
    result = runner.invoke(app, ["info", "--backbone", "resnet18", "--image-size", "100"])
    assert result.exit_code == 2
    assert "multiple of 32" in result.output and "Traceback" not in result.output


def test_info_bad_layer():
    result = runner.invoke(app, [*ARGS, "--disc", "single:layer=f12"])
    assert result.exit_code == 2
    assert "f0" in result.output and "f12" in result.output
