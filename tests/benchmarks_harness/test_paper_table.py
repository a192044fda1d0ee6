"""benchmarks/paper_table.py: the recipes it reads, the method table, the claims, and a
TINY end-to-end run that resumes."""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from stainadapt import recipes

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
MODULES = ("paper_table", "paper_methods", "paper_render")


@pytest.fixture(scope="module")
def pt():
    """The script and its two modules, imported as the script imports them."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        pt = importlib.import_module("paper_table")
        yield pt
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in MODULES:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def pm(pt):
    return sys.modules["paper_methods"]


@pytest.fixture(scope="module")
def pr(pt):
    return sys.modules["paper_render"]


@pytest.fixture(scope="module")
def data(pt, tmp_path_factory):
    return pt.ensure_data(recipes.PAPER_TINY, tmp_path_factory.mktemp("table"))


def test_methods_table_is_consistent(pm):
    ids = [m.id for m in pm.METHODS]
    assert len(ids) == len(set(ids))
    assert set(pm.PAPER) <= set(ids)
    for lo, hi, dom, rel, where in pm.CLAIMS:
        assert lo in ids and hi in ids and dom in ("S", "T") and rel in ("<", "<=")
        assert "issue" not in where
    for m in pm.METHODS:
        assert m.tables in ("1", "2", "12")
        assert (m.mode == "eval") == (m.base is not None) == (m.normalizer is not None)
        assert (m.schedule in pm.SCHEDULES) == (m.mode != "eval")
        # every row with a discriminator adapts the shared source G (the paper's schedule)
        assert (m.schedule == "d0+adv") == bool(m.discs)
        if m.discs:
            assert m.init == "source-only"
        if m.depends_on is not None:
            assert ids.index(m.depends_on) < ids.index(m.id)
    assert pm.BY_ID["source-only"].init is None and pm.BY_ID["source-only"].schedule == "s0"


def test_paper_numbers_satisfy_the_claims(pm, pr):
    stats = {(mid, dom, "dice"): pr.Stat(v[0], v[1], 3)
             for mid, doms in pm.PAPER.items() for dom, v in doms.items()}
    verdicts = dict((c[:4], v) for c, v in pr.check_claims(stats))
    assert all(v.startswith("holds") for v in verdicts.values()), verdicts
    assert pr.gap_recovered(stats) == pytest.approx(pm.PAPER_GAP)
    assert round(100 * pm.PAPER_GAP) == 77
    stats[("sf-4", "T", "dice")] = pr.Stat(99.0, 0.1, 3)  # a swapped pair is broken
    broken = [c for c, v in pr.check_claims(stats) if v == "BROKEN"]
    assert ("sf-4", "afc", "T", "<") in [c[:4] for c in broken]


def test_gap_figures(pr):
    stats = {(m, "T", "dice"): pr.Stat(v, None, 1) for m, v in (
        ("source-only", 50.0), ("source-only-longer", 60.0), ("uda-sed-zero", 55.0),
        ("uda-sed", 70.0), ("sda-sed", 90.0))}
    assert pr.gap_recovered(stats) == pytest.approx(0.5)
    assert pr.gap_recovered(stats, baseline="source-only-longer") == pytest.approx(1 / 3)
    assert pr.gap_recovered(stats, "uda-sed-zero") == pytest.approx(0.125)


def test_table_recipes_are_the_demo_recipe():
    """--budget quick is the demo's recipe on the table's data; full keeps its loss form."""
    q, d = recipes.PAPER_QUICK, recipes.DEMO
    for f in ("backbone", "image_size", "pretrain_epochs", "disc_epochs", "adv_epochs",
              "steps_per_epoch", "lr", "disc_lr", "dice_weight", "adv_loss", "select",
              "alpha_e", "alpha_d", "alpha_s", "self_train_rounds", "self_train_epochs"):
        assert getattr(q, f) == getattr(d, f), f
    assert d.uda_discs == ("mirrored:weight_encoder=0.01,weight_decoder=0.05",
                           "shape:weight=0.1")
    assert (recipes.PAPER_FULL.pretrain_epochs, recipes.PAPER_FULL.adv_epochs) == (20, 40)
    assert recipes.PAPER_FULL.adv_loss == d.adv_loss and q.seeds == 1
    assert recipes.get("demo-quick") is recipes.DEMO_QUICK
    with pytest.raises(KeyError, match="known"):
        recipes.get("nope")


def test_recipe_config_sets_d_fields_only_with_discriminators():
    r = recipes.PAPER_TINY
    plain = r.config("source-only", source="s", target="t", out="o", seed=3)
    assert (plain.seed, plain.samples, plain.val_fraction, plain.disc_lr) == (3, 0, 0.2, 1e-3)
    adv = r.config("uda", source="s", target="t", out="o", discs=r.uda_discs, adv_epochs=7,
                   adv_loss="minimax")
    assert (adv.disc_lr, adv.adv_loss, adv.adv_epochs, adv.seed) == (1e-4, "minimax", 7, 0)
    demo = recipes.DEMO.config("source-only", source="s", target="t", out="o")
    assert demo.samples == 4  # None in the recipe: TrainConfig's default


def test_weights_and_overrides(pt, pm):
    b = pt.apply_overrides(recipes.PAPER_TINY, ["alpha_e=0.5", "alpha_d=0.25",
                                                "alpha_s=0.125", "alpha_single=0.75"])
    specs = {m.id: pm.disc_specs(m, b) for m in pm.METHODS}
    assert specs["uda-sed"] == ["mirrored:weight_encoder=0.5,weight_decoder=0.25",
                                "shape:weight=0.125"]
    assert specs["uda-e"] == ["mirrored:side=encoder,weight_encoder=0.5"]
    assert specs["sf-9"] == ["single:layer=f9,weight=0.75"]
    assert specs["sda-sed"] == specs["uda-sed"]
    b = pt.apply_overrides(recipes.PAPER_QUICK, ["adv_epochs=3", "lr=1e-4", "augment=false"])
    assert (b.adv_epochs, b.lr, b.augment) == (3, 1e-4, False)
    for bad in ("nope=1", "adv_epochs=1.5", "augment=maybe", "adv_epochs", "name=x"):
        with pytest.raises(SystemExit):
            pt.apply_overrides(recipes.PAPER_QUICK, [bad])


def test_configs_follow_the_schedules(pt, pm, data, tmp_path):
    """Every row's config validates; dependents start from the seed's source-only folder;
    trained-on-Masson rows never see the Masson tiles held out for the table."""
    from stainadapt.data.folders import scan_domain
    from stainadapt.data.splits import held_out

    b = replace(recipes.PAPER_TINY, pretrain_epochs=3, disc_epochs=2, adv_epochs=5)
    source_dir = str(tmp_path / "runs" / "source-only-seed1")
    for m in pm.METHODS:
        if m.mode == "eval":
            continue
        c = pt.build_config(m, b, 1, data, pt.run_dir_of(tmp_path, m.id, 1), "cpu")
        assert c.mode == m.mode and c.seed == 1
        if m.discs:
            assert c.init == source_dir and c.phases() == ["disc"] * 2 + ["adv"] * 5, m.id
        elif m.schedule == "st":
            assert c.phases() == ["self"] * (b.self_train_rounds * b.self_train_epochs)
        elif m.schedule in ("s0", "adv"):
            assert c.phases() == ["seg"] * (3 if m.schedule == "s0" else 5), m.id
        else:
            assert c.init is None and c.phases() == ["seg"] * 8, m.id
        if m.source == "T":
            trained = {p.stem for p in (Path(c.source) / "images").iterdir()}
            test = {s.name for s in held_out(scan_domain(data.T, require_masks=True), c,
                                             "target")}
            assert trained and not trained & test
    assert [m.id for m in pt.plan_methods("uda-sed")] == ["source-only", "uda-sed"]
    assert [m.id for m in pt.plan_methods(None)] == [m.id for m in pm.METHODS]


def test_reuse_needs_the_same_config(pt):
    b = recipes.PAPER_TINY
    cfg = {"mode": "uda", "discs": ["shape:weight=0.1"], "out": "a", "init_run": "u1"}
    rec = {"status": "ok", "config": dict(cfg, out="moved"),
           "budget": {"data_n": 6, "data_size": 64, "data_seed": 0}}
    assert pt.is_done(rec, cfg, b)
    assert not pt.is_done(rec, dict(cfg, discs=["shape:weight=0.2"]), b)
    assert not pt.is_done(rec, dict(cfg, init_run="u2"), b)  # its init run trained again
    assert not pt.is_done(rec, cfg, recipes.PAPER_QUICK)  # other data
    assert not pt.is_done(dict(rec, status="error"), cfg, b) and not pt.is_done(None, cfg, b)
    # fields that change nothing without a discriminator or without self-training
    plain = {"mode": "source-only", "discs": [], "adv_loss": "minimax", "disc_lr": 1e-4}
    assert pt.comparable(plain) == pt.comparable({**plain, "adv_loss": "flip",
                                                  "disc_lr": 1e-3, "self_train_epochs": 3})


@pytest.mark.slow
def test_tiny_table_end_to_end_and_resume(pt, data, tmp_path, capsys):
    out, md = data.root.parent, tmp_path / "md" / "TABLE.md"  # the data is made already
    # source-only is not named: --only adds it, as the run the others depend on
    argv = ["--budget", "tiny", "--only", "macenko,uda-sed", "--out", str(out), "--md",
            str(md), "--device", "cpu"]
    assert pt.main(argv) == 0
    first = capsys.readouterr().out
    recs = {mid: json.loads((out / "results" / f"{mid}-seed0.json").read_text())
            for mid in ("source-only", "macenko", "uda-sed")}
    for mid, rec in recs.items():
        assert rec["status"] == "ok" and f"{mid} seed 0: " in first
        for dom in ("S", "T"):
            assert 0.0 <= rec[dom]["dice"] <= 1.0 and rec[dom]["n"] >= 1
    assert first.index("source-only seed 0: ") < first.index("uda-sed seed 0: ")
    uda, source, macenko = recs["uda-sed"], recs["source-only"], recs["macenko"]
    assert uda["config"]["init"] == str(out / "runs" / "source-only-seed0")
    assert uda["config"]["init_run"] == source["uid"] == macenko["config"]["base_run"]
    assert macenko["normalizer"] == "macenko" and macenko["eval_images"]["T"] >= 1
    assert not (out / "runs" / "uda-sed-seed0" / "state.pt").exists()  # dropped when done

    text = md.read_text()
    for heading in ("## Table 1", "## Table 2", "## Gap recovered", "## Ordering",
                    "## Methods (exact configuration)", "## Budget", "## Runs"):
        assert heading in text
    assert "--budget tiny" in text and "paper 77 %" in text and "issue" not in text
    assert "| P & M (unsupervised) | ours (UDA-sed) | " in text
    assert md.with_name("paper_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same command again skips every finished run
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    assert pt.main(argv) == 0
    assert capsys.readouterr().out.count(": skip (result exists") == 3
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}

    md.unlink()  # --render-only rebuilds the Markdown from the JSONs alone
    assert pt.main([*argv, "--render-only"]) == 0
    assert "## Table 2" in md.read_text()


def test_render_reads_older_results_and_uneven_seeds(pr, tmp_path):
    """Results written before newer recipe fields existed are one budget with the new
    ones; rows with fewer seeds are said; the self-training gap is in the headline."""
    new = pr.asdict(recipes.PAPER_QUICK)
    old = {k: v for k, v in new.items() if not k.startswith("self_") and k != "test_n"}

    def rec(mid, seed, dice, budget):
        return {"id": mid, "seed": seed, "status": "ok", "T": {"dice": dice},
                "S": {"dice": 0.9}, "budget": budget, "config": {}, "data": "d"}

    results = [rec("source-only", 0, 0.5, dict(old, name="quick")),
               rec("sda-sed", 0, 0.9, old), rec("uda-sed", 0, 0.52, old),
               rec("uda-sed-st", 0, 0.82, new), rec("uda-sed-st", 1, 0.78, new)]
    text = pr.render_markdown(tmp_path, results, [], None, tmp_path / "T.md")
    assert "different budgets" not in text
    assert "Not every row has every seed (1, 2 seeds)" in text
    assert "ours **5 %**" in text  # (52 - 50) / (90 - 50)
    assert "`--self-train-rounds`; not in the paper): **75 %**" in text  # (80 - 50) / 40
