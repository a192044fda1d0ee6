"""docs/make_demo_figure.py renders a demo folder (untrained models: no training needed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("make_demo_figure",
                                                  ROOT / "docs" / "make_demo_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_demo(tmp_path: Path) -> Path:
    from stainadapt.config import TrainConfig, dumps_toml
    from stainadapt.data.synth import generate
    from stainadapt.models.unet import SegmentationNet
    from stainadapt.runs import save_model

    data = generate(tmp_path / "data", n=10, size=64)
    demo = tmp_path / "demo"
    rows = []
    for name in ("source-only", "uda"):
        run = demo / name
        save_model(run, SegmentationNet("resnet18"), {"image_size": 64})
        cfg = TrainConfig(source=str(data / "pasm"), target=str(data / "masson"), out=str(run),
                          mode="uda", discs=["shape"])
        (run / "config.toml").write_text(dumps_toml(cfg))
        rows.append({"method": name, "run": str(run), "dice": 0.25, "n": 2})
    (demo / "results.json").write_text(json.dumps(
        {"rows": rows, "data": str(data), "quick": True, "budget": {"seed": 0}}))
    return demo


def test_demo_figure(tmp_path):
    module = _script()
    demo = _fake_demo(tmp_path)
    out = tmp_path / "fig.png"
    assert module.main([str(demo), "--out", str(out), "--cell", "64"]) == 0
    with Image.open(out) as image:
        width, height = image.size
    assert width == 6 + 4 * (64 + 6)
    assert height > 2 * 64  # the validation split of 10 tiles holds 2 images
    # with the UDA + self-training run: one more column
    from stainadapt.models.unet import SegmentationNet
    from stainadapt.runs import save_model

    save_model(demo / "uda-self-training", SegmentationNet("resnet18"), {"image_size": 64})
    assert module.main([str(demo), "--out", str(out), "--cell", "64"]) == 0
    with Image.open(out) as image:
        assert image.size[0] == 6 + 5 * (64 + 6)


def test_demo_figure_needs_results(tmp_path, capsys):
    assert _script().main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "stainadapt demo" in capsys.readouterr().err
