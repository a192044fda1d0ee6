"""benchmarks/real_tissue.py on tiny synthetic "real" tiles: folds, rows, resume."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from stainadapt.testing import make_domain

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "real_tissue.py"


@pytest.fixture(scope="module")
def rt():
    spec = importlib.util.spec_from_file_location("real_tissue", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_tissue"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("real_tissue", None)


def test_folds_test_every_tile_once(rt):
    names = [f"t{i:02d}" for i in range(24)]
    chunks = rt.folds(names, 4)
    assert [len(c) for c in chunks] == [6, 6, 6, 6]
    assert sorted(n for c in chunks for n in c) == names
    assert [len(c) for c in rt.folds(names[:10], 4)] == [2, 2, 2, 4]
    with pytest.raises(SystemExit):
        rt.folds(names[:3], 4)


def test_tiny_benchmark_end_to_end_and_resume(rt, tmp_path, capsys):
    data = make_domain(tmp_path / "tiles", "source", n=8, size=64)
    out, md = tmp_path / "out", tmp_path / "real.md"
    argv = [str(data), "--budget", "tiny", "--out", str(out), "--md", str(md),
            "--device", "cpu", "--folds", "0", "--set", "bn_recalibration=1",
            "--set", "norm=batch", "--adapt", "bn"]
    assert rt.main(argv) == 0
    results = sorted(p.name for p in (out / "results").iterdir())
    assert results == ["paper-fold0.json", "recipe+adabn-fold0.json", "recipe-fold0.json",
                       "smp-fold0.json"]
    adabn = json.loads((out / "results" / "recipe+adabn-fold0.json").read_text())
    assert adabn["test"] == ["im0", "im1"] and adabn["bn_layers"] > 0
    assert adabn["method"] == "recipe+adabn" and 0.0 <= adabn["dice"] <= 1.0
    rec = json.loads((out / "results" / "recipe-fold0.json").read_text())
    assert rec["test"] == ["im0", "im1"] and set(rec["per_tile"]) == {"im0", "im1"}
    assert 0.0 <= rec["dice"] <= 1.0
    assert rec["overrides"] == {"bn_recalibration": 1, "norm": "batch"}
    config = (out / "runs" / "recipe-fold0" / "config.toml").read_text()
    assert 'recipe = "real"' in config and "bn_recalibration = 1" in config
    # the training folder holds the other tiles only
    linked = {p.stem for p in (out / "data" / "fold0-train" / "images").iterdir()}
    assert linked == {f"im{i}" for i in range(2, 8)}
    paper = (out / "runs" / "paper-fold0" / "config.toml").read_text()
    assert 'recipe = "paper"' in paper and 'lr_schedule = "constant"' in paper
    text = md.read_text()
    assert "| recipe | 1 |" in text and "| smp | 1 |" in text and "| paper | 1 |" in text
    assert "| recipe+adabn | 1 |" in text
    capsys.readouterr()
    mtime = (out / "results" / "smp-fold0.json").stat().st_mtime_ns
    assert rt.main(argv) == 0  # everything is skipped
    assert "done before" in capsys.readouterr().out
    assert (out / "results" / "smp-fold0.json").stat().st_mtime_ns == mtime
    # flip TTA scores the finished recipe model again, without training
    tta_argv = argv[:argv.index("--adapt")] + ["--adapt", "tta", "--only", "recipe"]
    assert rt.main(tta_argv) == 0
    tta = json.loads((out / "results" / "recipe+tta-fold0.json").read_text())
    assert tta["method"] == "recipe+tta" and tta["adapt"] == "tta" and tta["bn_layers"] == 0
    assert set(tta["per_tile"]) == {"im0", "im1"}


def test_missing_data_is_one_line(rt, tmp_path, capsys):
    assert rt.main([str(tmp_path / "nowhere")]) == 2
    assert "no images/ folder" in capsys.readouterr().err


def test_tiny_part_b_rows_and_target_without_masks(rt, tmp_path):
    data = make_domain(tmp_path / "tiles", "source", n=8, size=64)
    out = tmp_path / "out"
    # the default --device auto, resolved once for every run and every reload
    argv = [str(data), "--part", "b", "--budget", "tiny", "--seeds", "1", "--out", str(out),
            "--set", "norm=batch"]
    assert rt.main(argv) == 0
    results = sorted(p.stem for p in (out / "results-b").iterdir())
    assert results == ["fda+adabn-seed0", "fda-seed0", "fda-st+adabn-seed0", "fda-st-seed0",
                       "macenko-seed0",
                       "source-only+adabn-seed0", "source-only-seed0",
                       "supervised+adabn-seed0", "supervised-seed0", "uda+adabn-seed0",
                       "uda-dsbn+target-seed0",
                       "uda-dsbn-seed0", "uda-seed0", "uda-st-seed0"]
    for name, mode in [("source-only+adabn-seed0", "bn"), ("uda+adabn-seed0", "bn"),
                       ("supervised+adabn-seed0", "bn"), ("fda+adabn-seed0", "bn"),
                       ("fda-st+adabn-seed0", "bn"),
                       ("uda-dsbn+target-seed0", "target")]:  # evaluation only
        rec = json.loads((out / "results-b" / f"{name}.json").read_text())
        assert rec["adapt"] == mode and rec["bn_layers"] > 0
    assert (out / "runs-b" / "uda-dsbn-seed0" / "target-stats.safetensors").is_file()
    for name in results:
        rec = json.loads((out / "results-b" / f"{name}.json").read_text())
        assert rec["test"] == ["im6", "im7"] and 0.0 <= rec["dice"] <= 1.0
    assert not (out / "data" / "target" / "masks").exists()  # the target is unlabelled
    uda = (out / "runs-b" / "uda-seed0" / "config.toml").read_text()
    assert 'mode = "uda"' in uda and "source-only-seed0" in uda
    assert "uda-seed0" in (out / "runs-b" / "uda-st-seed0" / "config.toml").read_text()
    fda = (out / "runs-b" / "fda-seed0" / "config.toml").read_text()
    assert 'mode = "source-only"' in fda and "fda_beta = 0.25" in fda and "target" in fda
    assert (out / "runs-b" / "uda-st-seed0" / "pseudo" / "round-1").is_dir()
    st = (out / "runs-b" / "fda-st-seed0" / "config.toml").read_text()
    assert "fda-seed0" in st and 'self_train_adapt = "bn"' in st and "fda_beta = 0.25" in st
    assert (out / "runs-b" / "fda-st-seed0" / "pseudo" / "round-1").is_dir()
    assert not (out / "runs-b" / "uda-seed0" / "state.pt").exists()
    # --only names the rows of part (b) to (re)score; the others are not touched
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "results-b").iterdir()}
    (out / "results-b" / "fda+adabn-seed0.json").unlink()
    assert rt.main(argv + ["--only", "fda+adabn"]) == 0
    assert rt.main(argv + ["--only", "fda+adbn"]) == 2  # a misspelt row: one line, no run
    assert (out / "results-b" / "fda+adabn-seed0.json").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results-b").iterdir()
            if p.name != "fda+adabn-seed0.json"} == {
        k: v for k, v in stamps.items() if k != "fda+adabn-seed0.json"}
