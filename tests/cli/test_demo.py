"""``stainadapt demo --quick``: both runs, the comparison table and where things are."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from stainadapt.cli.app import app


def test_demo_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("STAINADAPT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu",
                                      "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "source-only" in res.output and "UDA" in res.output
    result = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods[0] == "source-only" and methods[-1].startswith("UDA")
    dice = [r["dice"] for r in result["rows"]]  # source-only, -longer, Macenko, UDA
    assert result["uda_beats_source_only"] == (dice[-1] > max(dice[0], dice[1]))
    assert result["budget"]["seed"] == 3
    import torch

    assert result["torch_threads"] == torch.get_num_threads()  # results depend on it
    # every row is also scored on the held-out Masson draw (QUICK: 4 fresh tiles)
    assert all(r["test_n"] == 4 and 0 <= r["test_dice"] <= 1 for r in result["rows"])
    test = [r["test_dice"] for r in result["rows"]]
    assert result["uda_beats_source_only_on_test"] == (test[-1] > max(test[0], test[1]))
    assert "fresh tiles" in res.output
    for run in ("source-only", "uda"):
        assert "seed = 3" in (out / run / "config.toml").read_text()
        assert (out / run / "model.safetensors").is_file()
        assert (out / run / "curves.png").is_file()
    assert list((out / "uda" / "samples").glob("*.png"))
