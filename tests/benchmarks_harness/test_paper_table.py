"""benchmarks/paper_table.py: the method table, the claims, and a TINY end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "paper_table.py"


@pytest.fixture(scope="module")
def pt():
    spec = importlib.util.spec_from_file_location("paper_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["paper_table"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("paper_table", None)


def test_methods_table_is_consistent(pt):
    ids = [m.id for m in pt.METHODS]
    assert len(ids) == len(set(ids))
    assert set(pt.PAPER) <= set(ids)
    for lo, hi, dom, rel, _ in pt.CLAIMS:
        assert lo in ids and hi in ids and dom in ("S", "T") and rel in ("<", "<=")
    for m in pt.METHODS:
        assert m.tables in ("1", "2", "12")
        assert (m.mode == "eval") == (m.base is not None) == (m.normalizer is not None)
        if m.mode == "source-only":
            assert not m.discs
    # the rows are all there
    for mid in ("source-only", "target-only", "st-scratch", "sda-s", "sda-sed", "macenko",
                "reinhard", "vahadane", "source-only-jitter", "sf-4", "sf-9", "afc", "uda-e",
                "uda-d", "uda-ed", "uda-s", "uda-sed", "uda-sed-jitter"):
        assert mid in ids


def test_paper_numbers_satisfy_the_claims(pt):
    stats = {(mid, dom, "dice"): pt.Stat(v[0], v[1], 3)
             for mid, doms in pt.PAPER.items() for dom, v in doms.items()}
    verdicts = dict((c[:4], v) for c, v in pt.check_claims(stats))
    assert all(v.startswith("holds") for v in verdicts.values()), verdicts
    assert pt.gap_recovered(stats) == pytest.approx(pt.PAPER_GAP)
    assert round(100 * pt.PAPER_GAP) == 77
    # and a swapped pair is reported as broken
    stats[("sf-4", "T", "dice")] = pt.Stat(99.0, 0.1, 3)
    broken = [c for c, v in pt.check_claims(stats) if v == "BROKEN"]
    assert ("sf-4", "afc", "T", "<") in [c[:4] for c in broken]


def test_weights_come_from_the_budget(pt):
    b = pt.apply_overrides(pt.TINY, ["alpha_e=0.5", "alpha_d=0.25", "alpha_s=0.125",
                                     "alpha_single=0.75", "alpha_concat=0.0625"])
    specs = {m.id: pt.disc_specs(m, b) for m in pt.METHODS}
    assert specs["uda-sed"] == ["mirrored:weight_encoder=0.5,weight_decoder=0.25",
                                "shape:weight=0.125"]
    assert specs["uda-e"] == ["mirrored:side=encoder,weight_encoder=0.5"]
    assert specs["uda-d"] == ["mirrored:side=decoder,weight_decoder=0.25"]
    assert specs["sf-9"] == ["single:layer=f9,weight=0.75"]
    assert specs["afc"] == ["concat:weight=0.0625"]
    assert specs["sda-sed"] == specs["uda-sed"]


def test_overrides_are_typed_and_checked(pt):
    b = pt.apply_overrides(pt.QUICK, ["adv_epochs=3", "lr=1e-4", "augment=false",
                                      "select=last", "backbone=resnet34"])
    assert (b.adv_epochs, b.lr, b.augment, b.select, b.backbone) == (
        3, 1e-4, False, "last", "resnet34")
    for bad in ("nope=1", "adv_epochs=1.5", "augment=maybe", "adv_epochs"):
        with pytest.raises(SystemExit):
            pt.apply_overrides(pt.QUICK, [bad])


def test_quick_budget_follows_the_demo_recipe(pt):
    from stainadapt.engine import demo

    b = pt.Budget.from_demo(demo.DemoBudget(
        lr=1e-4, disc_lr=2e-4, dice_weight=0.5,
        discs=("mirrored:weight_encoder=0.07,weight_decoder=0.02", "shape:weight=0.3")), "x")
    assert (b.lr, b.disc_lr, b.dice_weight) == (1e-4, 2e-4, 0.5)
    assert (b.alpha_e, b.alpha_d, b.alpha_s) == (0.07, 0.02, 0.3)
    assert b.alpha_single == b.alpha_concat == 0.07
    b = pt.Budget.from_demo(demo.DemoBudget(discs=("mirrored", "shape")), "y")  # plugin defaults
    assert (b.alpha_e, b.alpha_d, b.alpha_s) == (0.01, 0.05, 0.1)
    assert pt.QUICK.lr == demo.FULL.lr and pt.QUICK.disc_lr == demo.FULL.disc_lr


def test_staleness(pt):
    cfg = {"mode": "uda", "discs": ["shape:weight=0.1"], "out": "a", "source": "s"}
    rec = {"status": "ok", "config": dict(cfg, out="elsewhere", source="moved"),
           "budget": {"data_n": 6, "data_size": 64, "data_seed": 0}}
    assert pt.is_done(rec, cfg, budget=pt.TINY) == (True, "done")
    assert not pt.is_done(rec, dict(cfg, discs=["shape:weight=0.2"]), budget=pt.TINY)[0]
    assert not pt.is_done(rec, cfg, budget=pt.QUICK)[0]  # other data
    assert not pt.is_done({"status": "error"}, cfg)[0]
    assert pt.is_done(None, cfg) == (False, "new")


@pytest.mark.slow
def test_tiny_table_end_to_end_and_resume(pt, tmp_path, capsys):
    out, md = tmp_path / "out", tmp_path / "md" / "TABLE.md"
    argv = ["--budget", "tiny", "--only", "source-only,macenko,uda-sed,sda-sed",
            "--seeds", "1", "--out", str(out), "--md", str(md), "--device", "cpu"]
    assert pt.main(argv) == 0
    first = capsys.readouterr().out
    ids = ("source-only", "macenko", "uda-sed", "sda-sed")
    mtimes = {}
    for mid in ids:
        path = out / "results" / f"{mid}-seed0.json"
        rec = json.loads(path.read_text())
        assert rec["status"] == "ok" and rec["seed"] == 0
        for dom in ("S", "T"):
            assert 0.0 <= rec[dom]["dice"] <= 1.0 and rec[dom]["n"] >= 1
        assert rec["budget"]["name"] == "tiny"
        mtimes[mid] = path.stat().st_mtime_ns
        assert f"{mid} seed 0: " in first
    assert json.loads((out / "results" / "macenko-seed0.json").read_text())["normalizer"] \
        == "macenko"
    uda = json.loads((out / "results" / "uda-sed-seed0.json").read_text())
    assert uda["config"]["mode"] == "uda" and len(uda["config"]["discs"]) == 2
    assert not (out / "runs" / "uda-sed-seed0" / "state.pt").exists()  # dropped when done
    assert (out / "runs" / "uda-sed-seed0" / "model.safetensors").is_file()

    text = md.read_text()
    for heading in ("## Table 1", "## Table 2", "## Gap recovered", "## Ordering",
                    "## Methods (exact configuration)", "## Budget", "## Runs"):
        assert heading in text
    assert "--budget tiny" in text and "paper 77 %" in text
    assert "| P & M (unsupervised) | ours (UDA-sed) | " in text
    assert "87.73 ± 0.15" in text and "| PASM | Origin | " in text
    png = md.with_name("paper_table.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second invocation skips every finished run
    assert pt.main(argv) == 0
    second = capsys.readouterr().out
    assert second.count(": skip (result exists") == len(ids)
    for mid in ids:
        assert (out / "results" / f"{mid}-seed0.json").stat().st_mtime_ns == mtimes[mid]
    assert len((out / "invocations.jsonl").read_text().splitlines()) == 2

    # --render-only rebuilds the Markdown from the JSONs alone
    md.unlink()
    assert pt.main([*argv, "--render-only"]) == 0
    assert "## Table 2" in md.read_text()


def test_every_method_config_is_valid(pt, tmp_path):
    """Every row's TrainConfig validates and its discriminators build on a real G."""
    from stainadapt.models.unet import SegmentationNet
    from stainadapt.registry import create

    data = pt.ensure_data(pt.TINY, tmp_path)
    g = SegmentationNet(backbone="resnet18")
    seen = set()
    for m in pt.METHODS:
        if m.mode == "eval":
            continue
        cfg = pt.build_config(m, pt.TINY, 0, data, tmp_path / "runs" / m.id, "cpu")
        assert cfg.mode == m.mode and cfg.seed == 0
        if m.id == "st-scratch":
            assert cfg.phases() == ["seg"] * (pt.TINY.pretrain_epochs + pt.TINY.adv_epochs)
        if m.id == "target-only":
            held_out = pt.EvalSets(data, 0, pt.TINY.val_fraction).names["T"]
            trained = [p.stem for p in (Path(cfg.source) / "images").iterdir()]
            assert trained and not set(trained) & set(held_out)
        for spec in cfg.discs:
            if spec not in seen:
                seen.add(spec)
                create("discriminators", spec, g.feature_table)
