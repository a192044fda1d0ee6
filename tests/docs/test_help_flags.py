"""The rich --help shows no value type after flags (they take none)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from stainadapt.cli.app import app


def test_flags_have_no_type_in_help():
    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "--overwrite" in result.output
    assert "<bool>" not in result.output
    for flag in ("--tta", "--overwrite", "--help"):
        line = next(x for x in result.output.splitlines() if re.search(rf"{flag}\b", x))
        assert "<" not in line, line
    # options that take a value keep their type
    assert re.search(r"--batch-size\s+\S*\s*<int>", result.output) or "INTEGER" in result.output
