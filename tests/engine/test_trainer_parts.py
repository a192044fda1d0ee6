"""The trainer's parts: evaluation maths, the discriminator view, progress bars, resume
rules and a step function supplied from outside (tiny runs on CPU)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from stainadapt.config import TrainConfig
from stainadapt.engine.callbacks import ProgressBars
from stainadapt.engine.resume_rules import check_resume
from stainadapt.engine.state import load_state
from stainadapt.engine.steps import StepBatch, disc_view
from stainadapt.engine.trainer import Trainer, resume, train
from stainadapt.errors import InputError

TINY = dict(backbone="resnet18", image_size=64, batch_size=2, steps_per_epoch=1,
            pretrain_epochs=1, disc_epochs=1, adv_epochs=1, device="cpu", samples=0)


def _cfg(out, domains, **kw) -> TrainConfig:
    s, t = domains
    values = dict(TINY, source=str(s), target=str(t), out=str(out))
    values.update(kw)
    return TrainConfig(**values)


# ---------------------------------------------------------------- evaluation


# ---------------------------------------------------------------- the discriminator view


def _batch(tgt_labelled: bool) -> StepBatch:
    ys, yt = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    x = torch.zeros(4, 3, 4, 4)
    return StepBatch(x[:2], ys, x[2:], yt, x, 2, True, tgt_labelled, tgt_labelled)


@pytest.mark.parametrize("tgt_labelled", [False, True])
def test_disc_view_says_what_each_discriminator_reads_and_answers(tgt_labelled):
    batch = _batch(tgt_labelled)
    probs = torch.full((4, 1, 4, 4), 0.5)
    feats = {"f4": torch.zeros(4, 8, 1, 1)}
    domain = disc_view(SimpleNamespace(kind="domain"), feats, probs, batch)
    assert set(domain.inputs) == {"f4", "mask"} and domain.first_g == 0
    assert domain.labels.tolist() == [1, 1, 0, 0]  # source 1, target 0
    shape = disc_view(SimpleNamespace(kind="shape"), feats, probs, batch)
    n_real = 4 if tgt_labelled else 2  # sda: S and T masks are real
    assert shape.inputs["mask"].shape[0] == n_real + 4 and shape.first_g == n_real
    assert shape.labels.tolist() == [1] * n_real + [0] * 4  # real 1, predicted 0


# ---------------------------------------------------------------- progress bars


def test_each_epoch_bar_keeps_its_own_label_through_self_training(tmp_path, domains):
    cfg = _cfg(tmp_path / "run", domains, mode="source-only", discs=[], adv_epochs=0,
               self_train_rounds=1, self_train_epochs=1)
    console = Console(file=io.StringIO(), width=200)
    trainer = Trainer(cfg, console=console, progress=True)
    trainer.fit()
    bars = next(cb for cb in trainer.callbacks if isinstance(cb, ProgressBars))
    labels = [task.description for task in bars.progress.tasks]
    assert labels[0].startswith("epoch 1/2 seg source dice")
    assert labels[1] == "epoch 2/2 self" + labels[1].removeprefix("epoch 2/2 self")
    assert " source dice " in labels[1]
    assert labels[2] == "self-training round 1: labelling the target"  # unchanged


# ---------------------------------------------------------------- resume rules


@pytest.fixture(scope="module")
def half_run(tmp_path_factory, domains):
    """A source-only run stopped after its first of two epochs."""
    out = tmp_path_factory.mktemp("half") / "run"
    train(_cfg(out, domains, mode="source-only", discs=[]), max_epochs=1)
    return out


@pytest.mark.parametrize(("overrides", "field"), [
    ({"steps_per_epoch": 2}, "steps_per_epoch"),
    ({"batch_size": 4}, "batch_size"),
    ({"adv_epochs": 0}, "adv_epochs"),
    ({"select": "last"}, "selection"),
    ({"seed": 7}, "seed"),
    ({"val_fraction": 0.5}, "val_fraction"),
])
def test_resume_refuses_a_schedule_change_in_one_line(half_run, overrides, field):
    before = (half_run / "metrics.jsonl").read_text()
    with pytest.raises(InputError, match=f"--resume: {field} cannot") as err:
        resume(half_run, overrides)
    assert "\n" not in str(err.value)
    assert (half_run / "metrics.jsonl").read_text() == before  # nothing trained


def test_resume_may_grow_the_epoch_counts(tmp_path, domains):
    out = tmp_path / "run"
    train(_cfg(out, domains, mode="source-only", discs=[]), max_epochs=1)
    result = resume(out, {"adv_epochs": 2, "select": None})  # None: not given
    assert result.epochs == 3 and load_state(out / "state.pt")["epoch"] == 3
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["seg"] * 3


def test_resume_rules_for_rounds_and_trained_phases():
    base = dict(source="s", target="t", mode="uda", discs=["shape"], pretrain_epochs=2,
                disc_epochs=1, adv_epochs=2, self_train_rounds=2, self_train_epochs=2)
    old = TrainConfig(**base)
    check_resume(old, TrainConfig(**{**base, "self_train_rounds": 3}), epoch=7)
    check_resume(old, TrainConfig(**{**base, "adv_epochs": 4}), epoch=4)  # inside adv
    with pytest.raises(InputError, match="self_train_rounds cannot shrink"):
        check_resume(old, TrainConfig(**{**base, "self_train_rounds": 1}), epoch=3)
    with pytest.raises(InputError, match="change epoch 3, already trained"):
        check_resume(old, TrainConfig(**{**base, "pretrain_epochs": 3}), epoch=4)
    check_resume(old, TrainConfig(**{**base, "pretrain_epochs": 3}), epoch=2)  # still in seg
    longer_rounds = TrainConfig(**{**base, "self_train_epochs": 3})
    check_resume(old, longer_rounds, epoch=7)  # inside round 1: it may grow
    with pytest.raises(InputError, match="already trained"):  # round 2 began: regrouped
        check_resume(old, longer_rounds, epoch=8)


# ---------------------------------------------------------------- a step from outside


def test_a_step_function_from_outside_trains_the_adv_epochs(tmp_path, domains):
    """examples/gradient_reversal.py: one module, passed as ``steps={"adv": ...}``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    try:
        from gradient_reversal import grl_adv_step
    finally:
        sys.path.pop(0)
    cfg = _cfg(tmp_path / "run", domains, mode="uda", discs=["single:layer=f4", "shape"],
               pretrain_epochs=0, disc_epochs=0, adv_epochs=1, steps_per_epoch=2)
    trainer = Trainer(cfg, steps={"adv": grl_adv_step})
    before = [{k: v.clone() for k, v in d.state_dict().items()} for d in trainer.discs]
    result = trainer.fit()
    losses = result.records[0]["losses"]
    assert result.records[0]["phase"] == "adv" and result.epochs == 1
    assert {"seg", "g_total", "d_single.single", "d_shape.shape"} <= set(losses)
    assert not any(k.startswith("adv_") for k in losses)  # the built-in step did not run
    for d, sd in zip(trainer.discs, before, strict=True):  # each discriminator learnt
        assert any(not torch.equal(v, sd[k]) for k, v in d.state_dict().items())
