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
        assert (m.schedule in pt.SCHEDULES) == (m.mode != "eval")
        # every row with a discriminator adapts the shared source G (the paper's schedule)
        assert (m.schedule == "d0+adv") == bool(m.discs)
        if m.discs:
            assert m.init == "source-only"
        if m.depends_on is not None:
            assert ids.index(m.depends_on) < ids.index(m.id)
    assert pt.BY_ID["source-only"].init is None and pt.BY_ID["source-only"].schedule == "s0"
    # every row of the paper's tables is there, and the two baselines of the shared-G schedule
    for mid in ("source-only", "target-only", "st-scratch", "sda-s", "sda-sed", "macenko",
                "reinhard", "vahadane", "source-only-jitter", "sf-4", "sf-9", "afc", "uda-e",
                "uda-d", "uda-ed", "uda-s", "uda-sed", "uda-sed-jitter",
                "source-only-longer", "uda-sed-zero"):
        assert mid in ids
    assert "uda-sed-zero" not in pt.PAPER and "source-only-longer" not in pt.PAPER


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


def test_quick_is_the_demo_schedule(pt):
    """QUICK measures what the demo measures: demo.FULL's s0/d0/adv, steps and loss form."""
    from stainadapt.engine import demo

    q, d = pt.QUICK, demo.FULL
    assert (q.pretrain_epochs, q.disc_epochs, q.adv_epochs, q.steps_per_epoch) == (
        d.pretrain_epochs, d.disc_epochs, d.adv_epochs, d.steps_per_epoch)
    assert q.adv_loss == d.adv_loss and q.seeds == 1
    assert pt.Budget.from_demo(demo.DemoBudget(adv_loss="minimax"), "x").adv_loss == "minimax"
    # FULL (GPU) keeps its own schedule but the demo's loss form
    assert (pt.FULL.pretrain_epochs, pt.FULL.adv_epochs) == (20, 40)
    assert pt.FULL.adv_loss == d.adv_loss


def test_schedules_share_the_source_g(pt, tmp_path):
    """Dependents start from the seed's source-only folder; epochs follow each schedule."""
    from stainadapt.registry import parse_spec

    data = pt.ensure_data(pt.TINY, tmp_path)
    b = pt.replace(pt.TINY, pretrain_epochs=3, disc_epochs=2, adv_epochs=5,
                   adv_loss="minimax")
    runs = tmp_path / "runs"

    def cfg(mid, seed=1):
        return pt.build_config(pt.BY_ID[mid], b, seed, data, pt.run_dir_of(tmp_path, mid, seed),
                               "cpu")

    def epochs(c):
        return c.pretrain_epochs, c.disc_epochs, c.adv_epochs

    so = cfg("source-only")
    assert so.mode == "source-only" and so.init is None and epochs(so) == (3, 0, 0)
    assert so.phases() == ["seg"] * 3
    source_dir = str(runs / "source-only-seed1")
    assert so.out == source_dir
    for mid in ("sf-4", "sf-9", "afc", "uda-s", "uda-e", "uda-d", "uda-ed", "uda-sed",
                "uda-sed-jitter", "uda-sed-zero", "sda-s", "sda-sed"):
        c = cfg(mid)
        assert c.init == source_dir, mid
        assert epochs(c) == (0, 2, 5) and c.phases() == ["disc"] * 2 + ["adv"] * 5, mid
        assert c.adv_loss == "minimax", mid
    longer = cfg("source-only-longer")
    assert longer.init == source_dir and longer.mode == "source-only" and not longer.discs
    assert longer.phases() == ["seg"] * 5  # as many G updates as the adversarial rows
    jitter = cfg("source-only-jitter")
    assert jitter.init is None and jitter.phases() == ["seg"] * 3 and jitter.stain_jitter > 0
    for mid in ("target-only", "st-scratch"):
        c = cfg(mid)
        assert c.init is None and c.phases() == ["seg"] * 8, mid
        assert c.adv_loss == "flip"  # the trainer's default: no adversarial term here
    # self-training continues the source G or UDA-sed's model, rounds x epochs of "self"
    for mid, init in (("self-training", "source-only"), ("uda-sed-st", "uda-sed"),
                      ("longer-st", "source-only-longer")):
        c = cfg(mid)
        assert c.init == str(runs / f"{init}-seed1") and c.mode == "source-only", mid
        assert c.target and not c.discs and c.select == b.select, mid
        assert c.phases() == ["self"] * (b.self_train_rounds * b.self_train_epochs), mid
    # the control is uda-sed with every weight 0
    zero, sed = cfg("uda-sed-zero"), cfg("uda-sed")
    assert [parse_spec(s)[0] for s in zero.discs] == [parse_spec(s)[0] for s in sed.discs]
    weights = [float(v) for s in zero.discs for k, v in parse_spec(s)[1].items()
               if k.startswith("weight")]
    assert weights == [0.0, 0.0, 0.0]
    assert {k: v for k, v in zero.as_dict().items() if k not in ("discs", "out")} == \
        {k: v for k, v in sed.as_dict().items() if k not in ("discs", "out")}
    # --only adds the dependencies, before their dependents
    assert [m.id for m in pt.plan_methods("uda-sed")] == ["source-only", "uda-sed"]
    assert [m.id for m in pt.plan_methods("macenko,source-only-longer")] == [
        "source-only", "macenko", "source-only-longer"]
    assert [m.id for m in pt.plan_methods(None)] == [m.id for m in pt.METHODS]


def test_gap_figures(pt):
    stats = {(m, "T", "dice"): pt.Stat(v, None, 1) for m, v in (
        ("source-only", 50.0), ("source-only-longer", 60.0), ("uda-sed-zero", 55.0),
        ("uda-sed", 70.0), ("sda-sed", 90.0))}
    assert pt.gap_recovered(stats) == pytest.approx(0.5)
    assert pt.gap_recovered(stats, baseline="source-only-longer") == pytest.approx(1 / 3)
    assert pt.gap_recovered(stats, baseline="uda-sed-zero") == pytest.approx(15 / 35)
    assert pt.gap_recovered(stats, "uda-sed-zero") == pytest.approx(0.125)


def test_staleness(pt):
    cfg = {"mode": "uda", "discs": ["shape:weight=0.1"], "out": "a", "source": "s"}
    rec = {"status": "ok", "config": dict(cfg, out="elsewhere", source="moved"),
           "budget": {"data_n": 6, "data_size": 64, "data_seed": 0}}
    assert pt.is_done(rec, cfg, budget=pt.TINY) == (True, "done")
    assert not pt.is_done(rec, dict(cfg, discs=["shape:weight=0.2"]), budget=pt.TINY)[0]
    assert not pt.is_done(rec, cfg, budget=pt.QUICK)[0]  # other data
    assert not pt.is_done({"status": "error"}, cfg)[0]
    assert pt.is_done(None, cfg) == (False, "new")
    # a dependent records the identity of the run it started from
    dep = dict(cfg, init="runs/source-only-seed0", init_run="uid-1")
    rec = {"status": "ok", "config": dict(dep, init="moved/source-only-seed0"),
           "budget": rec["budget"]}
    assert pt.is_done(rec, dep, budget=pt.TINY) == (True, "done")
    again = pt.is_done(rec, dict(dep, init_run="uid-2"), budget=pt.TINY)
    assert again == (False, "stale (its init run was trained again): training again")
    assert not pt.is_done(rec, dict(dep, init_run=None), budget=pt.TINY)[0]
    # an evaluated row: its base's identity
    base = {"status": "ok", "uid": "b1", "config": {"mode": "source-only"}}
    ev = {"status": "ok", "config": {"mode": "source-only", "eval_normalizer": "macenko",
                                     "base_run": "b1"}}
    assert pt.is_done(ev, None, base)[0]
    assert not pt.is_done(ev, None, dict(base, uid="b2"))[0]
    assert pt.run_identity({"status": "error"}) is None
    old = {"status": "ok", "date": "2026-01-01 00:00:00", "config": {"mode": "uda"}}
    assert pt.run_identity(old) == pt.run_identity(dict(old)) != pt.run_identity(
        dict(old, date="2026-01-02 00:00:00"))


@pytest.mark.slow
def test_tiny_table_end_to_end_and_resume(pt, tmp_path, capsys):
    out, md = tmp_path / "out", tmp_path / "md" / "TABLE.md"
    # source-only is not named: --only adds it, as the run the others depend on
    argv = ["--budget", "tiny", "--only", "macenko,uda-sed,sda-sed,uda-sed-st",
            "--seeds", "1", "--out", str(out), "--md", str(md), "--device", "cpu",
            "--jobs", "1"]  # the serial loop; --jobs 2 has its own test
    assert pt.main(argv) == 0
    first = capsys.readouterr().out
    ids = ("source-only", "macenko", "uda-sed", "sda-sed", "uda-sed-st")
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
    assert first.index("source-only seed 0: ") < first.index("uda-sed seed 0: ")
    uda = json.loads((out / "results" / "uda-sed-seed0.json").read_text())
    source = json.loads((out / "results" / "source-only-seed0.json").read_text())
    assert uda["config"]["mode"] == "uda" and len(uda["config"]["discs"]) == 2
    assert uda["config"]["init"] == str(out / "runs" / "source-only-seed0")
    assert uda["config"]["pretrain_epochs"] == 0 and uda["config"]["adv_loss"] == "flip"
    assert uda["config"]["init_run"] == source["uid"]
    assert source["config"]["adv_epochs"] == 0 and source["config"]["init"] is None
    assert not (out / "runs" / "uda-sed-seed0" / "state.pt").exists()  # dropped when done
    st = json.loads((out / "results" / "uda-sed-st-seed0.json").read_text())
    assert st["config"]["init_run"] == uda["uid"] and st["config"]["self_train_rounds"] == 2
    labels = out / "runs" / "uda-sed-st-seed0" / "pseudo"
    assert sorted(p.name for p in labels.iterdir()) == ["round-1", "round-2"]
    # only Masson's training split is pseudo-labelled, never the held-out test tiles
    held_out = set(pt.EvalSets(pt.ensure_data(pt.TINY, out), 0,
                               pt.TINY.val_fraction).names["T"])
    labelled = {p.stem for p in (labels / "round-1").iterdir()}
    assert labelled and not labelled & held_out
    assert (out / "runs" / "uda-sed-seed0" / "model.safetensors").is_file()

    text = md.read_text()
    for heading in ("## Table 1", "## Table 2", "## Gap recovered", "## Ordering",
                    "## Methods (exact configuration)", "## Budget", "## Runs"):
        assert heading in text
    assert "--budget tiny" in text and "paper 77 %" in text
    assert "| P & M (unsupervised) | ours (UDA-sed) | " in text
    assert "87.73 ± 0.15" in text and "| PASM | Origin | " in text
    assert "ours, α = 0 (control)" in text and "Origin, s0 + adv epochs" in text
    assert "UDA-sed over source-only-longer" in text and "over the α = 0 control" in text
    assert "| uda-sed | ours (UDA-sed) | uda | PASM + Masson (unlabelled) | the shared " \
        "source G (this seed's `source-only` run) | 1 D only + 1 adversarial |" in text
    assert "| target-only | Origin | source-only | Masson (its training split) | scratch" in text
    png = md.with_name("paper_table.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second invocation skips every finished run
    assert pt.main(argv) == 0
    second = capsys.readouterr().out
    assert second.count(": skip (result exists") == len(ids)
    for mid in ids:
        assert (out / "results" / f"{mid}-seed0.json").stat().st_mtime_ns == mtimes[mid]
    assert len((out / "invocations.jsonl").read_text().splitlines()) == 2

    # source-only trained again (its result gone): the runs that start from it or
    # evaluate it are stale, even with an unchanged configuration
    (out / "results" / "source-only-seed0.json").unlink()
    only = [*argv[:3], "uda-sed", *argv[4:]]
    assert pt.main(only) == 0
    third = capsys.readouterr().out
    assert "source-only seed 0: " in third
    assert "uda-sed seed 0: stale (its init run was trained again)" in third
    assert "macenko" not in third and "sda-sed" not in third  # not asked for
    new_source = json.loads((out / "results" / "source-only-seed0.json").read_text())
    assert new_source["uid"] != source["uid"]
    assert json.loads((out / "results" / "uda-sed-seed0.json").read_text())[
        "config"]["init_run"] == new_source["uid"]
    assert pt.main(argv) == 0
    fourth = capsys.readouterr().out
    assert "macenko seed 0: stale (its base run changed)" in fourth
    assert "sda-sed seed 0: stale (its init run was trained again)" in fourth
    assert "uda-sed-st seed 0: stale (its init run was trained again)" in fourth
    assert fourth.count(": skip (result exists") == 2  # source-only, uda-sed

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
        if m.init is not None:
            assert cfg.init == str(tmp_path / "runs" / f"{m.init}-seed0")
        if m.id == "target-only":
            held_out = pt.EvalSets(data, 0, pt.TINY.val_fraction).names["T"]
            trained = [p.stem for p in (Path(cfg.source) / "images").iterdir()]
            assert trained and not set(trained) & set(held_out)
        for spec in cfg.discs:
            if spec not in seen:
                seen.add(spec)
                create("discriminators", spec, g.feature_table)


def test_adv_loss_does_not_make_runs_without_a_discriminator_stale(pt):
    """A new trainer default for adv_loss changes nothing where G has no adversarial term."""
    plain = {"mode": "source-only", "discs": [], "adv_loss": "minimax", "lr": 1e-3}
    assert pt._comparable(plain) == pt._comparable({**plain, "adv_loss": "flip"})
    adv = {"mode": "uda", "discs": ["shape"], "adv_loss": "minimax", "lr": 1e-3}
    assert pt._comparable(adv) != pt._comparable({**adv, "adv_loss": "flip"})


def test_self_training_fields_do_not_make_older_runs_stale(pt):
    """A result written before self_train_* existed equals a config with self-training off;
    with self-training on, its rounds and epochs count."""
    old = {"mode": "uda", "discs": ["shape"], "lr": 1e-3}
    new = {**old, "self_train_rounds": 0, "self_train_epochs": 12}
    assert pt._comparable(old) == pt._comparable(new) == pt._comparable(
        {**new, "self_train_epochs": 3})
    on = {**new, "self_train_rounds": 2}
    assert pt._comparable(on) != pt._comparable(old)
    assert pt._comparable(on) != pt._comparable({**on, "self_train_epochs": 3})


def test_jobs_runs_tasks_in_processes_after_their_dependency(pt, tmp_path, capsys):
    """--jobs 2: each run in its own process, a dependent run only after its init run."""
    out, md = tmp_path / "out", tmp_path / "TABLE.md"
    argv = ["--budget", "tiny", "--only", "macenko,uda-sed", "--seeds", "1", "--out", str(out),
            "--md", str(md), "--device", "cpu", "--jobs", "2"]
    assert pt.main(argv) == 0
    text = capsys.readouterr().out
    assert "2 runs at a time" in text
    source = json.loads((out / "results" / "source-only-seed0.json").read_text())
    uda = json.loads((out / "results" / "uda-sed-seed0.json").read_text())
    macenko = json.loads((out / "results" / "macenko-seed0.json").read_text())
    assert source["status"] == uda["status"] == macenko["status"] == "ok"
    assert uda["config"]["init_run"] == source["uid"]  # started from the finished G
    assert macenko["config"]["base_run"] == source["uid"]
    assert source["threads"] >= 1
    for mid in ("source-only", "macenko", "uda-sed"):
        assert (out / "logs" / f"{mid}-seed0.log").is_file()
        assert f"{mid} seed 0: " in text
    # uda-sed starts only once source-only has reported its result
    lines = text.splitlines()
    done = next(i for i, x in enumerate(lines) if "source-only seed 0: " in x and "Dice" in x)
    start = next(i for i, x in enumerate(lines) if "uda-sed seed 0: started" in x)
    assert done < start
    last = json.loads((out / "invocations.jsonl").read_text().splitlines()[-1])
    assert last["jobs"] == 2 and last["counts"]["trained"] == 2
    assert "2 run(s) at a time" in md.read_text()
    # the same command again: every task is skipped by its child
    assert pt.main(argv) == 0
    assert capsys.readouterr().out.count(": skip (result exists") == 3


def test_task_child_refuses_a_bad_spec(pt, tmp_path):
    with pytest.raises(SystemExit, match="METHOD:SEED"):
        pt.main(["--budget", "tiny", "--out", str(tmp_path), "--task", "nope:0"])


def test_default_jobs(pt):
    import os

    assert pt.default_jobs("cpu") == max(1, min(8, os.cpu_count() or 1))
    assert pt.default_jobs("not-a-device") == 1  # the runs report the bad device


def test_jobs_start_the_longest_chain_first(pt):
    """--jobs orders ready runs by critical path: the shared source G (every adapted row
    waits for it) before a longer run nothing waits for, and longer rows before shorter."""
    plan = [(m, s) for s in (0, 1) for m in pt.plan_methods("target-only,macenko,uda-sed")]
    budget = pt.QUICK
    prio = pt.critical_path(plan, budget)
    cost = {m.id: pt.task_cost(m, budget) for m, _ in plan}
    assert cost["uda-sed"] > cost["source-only"] > cost["macenko"]
    assert prio[("source-only", 0)] == cost["source-only"] + cost["uda-sed"]
    assert prio[("macenko", 1)] == cost["macenko"]  # nothing waits for an eval row
    order = pt.start_order(plan, budget)  # what run_parallel's pending list starts as
    assert [m.id for m, _ in order[:2]] == ["source-only", "source-only"]
    assert order[-1][0].id == "macenko"


def test_render_reads_older_results_and_uneven_seeds(pt, tmp_path):
    """Results written before the self-training fields existed are one budget with the new
    ones; rows with fewer seeds are said; the self-training gap is in the headline."""
    old_budget = {k: v for k, v in pt.asdict(pt.QUICK).items() if not k.startswith("self_")}

    def rec(mid, seed, dice, budget):
        return {"id": mid, "seed": seed, "status": "ok", "T": {"dice": dice},
                "S": {"dice": 0.9}, "budget": budget, "config": {}, "data": "d"}

    results = [rec("source-only", 0, 0.5, old_budget), rec("sda-sed", 0, 0.9, old_budget),
               rec("uda-sed", 0, 0.52, old_budget),
               rec("uda-sed-st", 0, 0.82, pt.asdict(pt.QUICK)),
               rec("uda-sed-st", 1, 0.78, pt.asdict(pt.QUICK))]
    assert pt.budget_of(results[0]) == pt.budget_of(results[-1])
    text = pt.render_markdown(tmp_path, results, [], None, tmp_path / "T.md")
    assert "different budgets" not in text
    assert "Not every row has every seed (1, 2 seeds)" in text
    assert "ours **5 %**" in text  # (52 - 50) / (90 - 50)
    assert "`--self-train-rounds`; not in the paper): **75 %**" in text  # (80 - 50) / 40
