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
    assert methods[0] == "source-only" and methods[-2].startswith("UDA (")
    assert methods[-1].startswith("UDA + self-training (1 rounds")
    # source-only, -longer, Macenko, test-time BN, UDA, UDA + self-training
    assert "source-only + test-time BN (AdaBN)" in methods
    dice = [r["dice"] for r in result["rows"]]
    assert result["uda_beats_source_only"] == (dice[-2] > max(dice[0], dice[1]))
    assert result["self_trained_beats_source_only"] == (dice[-1] > max(dice[0], dice[1]))
    assert result["budget"]["seed"] == 3
    import torch

    assert result["torch_threads"] == torch.get_num_threads()  # results depend on it
    # every row is also scored on the held-out Masson draw (QUICK: 4 fresh tiles)
    assert all(r["test_n"] == 4 and 0 <= r["test_dice"] <= 1 for r in result["rows"])
    test = [r["test_dice"] for r in result["rows"]]
    assert result["uda_beats_source_only_on_test"] == (test[-2] > max(test[0], test[1]))
    assert result["self_trained_beats_source_only_on_test"] == (
        test[-1] > max(test[0], test[1]))
    assert "fresh tiles" in res.output and "uda-self-training" in res.output
    # the self-training run starts from the UDA model and labels Masson's training split
    st = out / "uda-self-training"
    assert f'init = "{out / "uda"}"' in (st / "config.toml").read_text()
    assert len(list((st / "pseudo" / "round-1").glob("*.png"))) == 8  # 10 tiles, 2 held out
    for run in ("source-only", "uda", "uda-self-training"):
        assert "seed = 3" in (out / run / "config.toml").read_text()
        assert (out / run / "model.safetensors").is_file()
        assert (out / run / "curves.png").is_file()
    assert list((out / "uda" / "samples").glob("*.png"))


def test_demo_says_when_uda_loses_and_what_helped(tmp_path, monkeypatch):
    """The full-budget verdict line (not printed for --quick): a loss is said, with where
    the measurements and the self-training recipe are. run_demo is stubbed: the full
    budget takes minutes."""
    import stainadapt.engine.demo as demo

    def fake(out, quick, **kw):
        row = {"method": "source-only", "run": "x", "dice": 0.5, "dice_std": 0.1,
               "accuracy": 0.9, "accuracy_std": 0.0, "n": 10, "source_dice": 0.9,
               "test_dice": 0.5, "test_dice_std": 0.1, "test_n": 64}
        return {"rows": [row, {**row, "method": "UDA (mirrored + shape)", "dice": 0.4}],
                "uda_beats_source_only": False, "uda_beats_source_only_on_test": True,
                "self_trained_beats_source_only": True,
                "self_trained_beats_source_only_on_test": True, "seconds": 1.0,
                "runs": [str(out / "source-only"), str(out / "uda")]}

    monkeypatch.setattr(demo, "run_demo", fake)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "UDA did not beat source-only on the validation split and beat it" in text
    assert "UDA + self-training beat source-only on the validation split and beat it" in text
    assert "--self-train-rounds" in text and "docs/guide.md" in text
