"""docs/cli.md is generated from the Typer app and must match a fresh render."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "make_cli_reference.py"


def _renderer():
    spec = importlib.util.spec_from_file_location("make_cli_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    fresh = _renderer().render()
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == fresh, "docs/cli.md is stale: run `python docs/make_cli_reference.py`"


def test_render_is_deterministic_and_complete(monkeypatch):
    import typer.main

    from stainadapt.cli.app import app

    module = _renderer()
    monkeypatch.setenv("COLUMNS", "40")  # the terminal width must not matter
    text = module.render()
    monkeypatch.setenv("COLUMNS", "200")
    assert module.render() == text
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():
        assert f"## `stainadapt {name}`" in text
        for param in cmd.params:
            if param.param_type_name == "option" and not param.hidden:
                assert f"`{param.opts[0]}`" in text, (name, param.opts)
    assert "[bold" not in text and "\x1b[" not in text  # no rich markup or colours


def test_check_mode_reports_stale(tmp_path, capsys):
    module = _renderer()
    stale = tmp_path / "cli.md"
    stale.write_text("old\n", encoding="utf-8")
    assert module.main(["--check", "--out", str(stale)]) == 1
    assert "python docs/make_cli_reference.py" in capsys.readouterr().out
    assert module.main(["--out", str(stale)]) == 0
    assert module.main(["--check", "--out", str(stale)]) == 0
