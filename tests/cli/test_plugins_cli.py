"""``stainadapt --version``, ``plugins`` and ``plugins --json`` through the Typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from stainadapt import __version__, registry
from stainadapt.cli.app import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_plugins_json_lists_builtins_with_keys():
    registry.clear_cache()
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {"group", "name", "package", "status", "error"} <= set(rows[0])
    pairs = {(r["group"], r["name"]) for r in rows}
    assert ("backbones", "resnet34") in pairs
    assert ("normalizers", "macenko") in pairs


def test_plugins_table_and_group_filter():
    result = runner.invoke(app, ["plugins", "--group", "discriminators"])
    assert result.exit_code == 0
    assert "mirrored" in result.output
    assert "macenko" not in result.output


def test_bad_group_is_one_line_exit_2():
    result = runner.invoke(app, ["plugins", "--group", "losses"])
    assert result.exit_code == 2
    assert "unknown plugin group" in result.output
    assert "Traceback" not in result.output
