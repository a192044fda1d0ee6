"""Divergence: non-finite losses are skipped, K in a row roll back with lower rates.

NaN is injected by wrapping the steps' ``seg_loss`` (or by poisoning a weight after a
step), so the tests drive the real training loop on a tiny run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY
from rich.console import Console
from typer.testing import CliRunner

import stainadapt.engine.steps as steps_mod
from stainadapt.cli.app import app
from stainadapt.config import TrainConfig
from stainadapt.engine.state import load_state
from stainadapt.engine.trainer import Trainer, train
from stainadapt.errors import RunFailure
from stainadapt.models.unet import SegmentationNet
from stainadapt.runs import load_model, non_finite, save_model


def _cfg(tmp_path: Path, domains, **kw) -> TrainConfig:
    s, _ = domains
    values = dict(TINY, source=str(s), mode="source-only", pretrain_epochs=1, adv_epochs=2,
                  divergence_steps=2, out=str(tmp_path / "run"))
    values.update(kw)
    return TrainConfig(**values)


def _nan_on(monkeypatch, calls: set[int] | None = None, start: int | None = None) -> list[int]:
    """Make ``seg_loss`` return NaN on the given 1-based calls (or every call from ``start``)."""
    real = steps_mod.seg_loss
    seen: list[int] = []

    def fake(*args, **kwargs):
        seen.append(len(seen) + 1)
        loss = real(*args, **kwargs)
        n = seen[-1]
        if (calls and n in calls) or (start is not None and n >= start):
            return loss * float("nan")
        return loss

    monkeypatch.setattr(steps_mod, "seg_loss", fake)
    return seen


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _finite_state(run: Path) -> dict:
    state = load_state(run / "state.pt")
    assert non_finite([state["model"], state["discs"], state["opt_g"], state["opt_d"]]) == []
    return state


def test_consecutive_nan_losses_roll_back_with_lower_lr(tmp_path, tiny_domains, monkeypatch):
    # epoch 0 = calls 1-2, epoch 1 = calls 3-4 (both NaN: 2 in a row), retried as 5-6
    _nan_on(monkeypatch, calls={3, 4})
    buf = io.StringIO()
    cfg = _cfg(tmp_path, tiny_domains)
    result = train(cfg, console=Console(file=buf, width=200))
    run = tmp_path / "run"
    rows = _rows(run)
    assert [r.get("event", r.get("phase")) for r in rows] == ["seg", "rollback", "seg", "seg"]
    event = rows[1]
    assert event["epoch"] == 1 and event["to_epoch"] == 1 and event["rollback"] == 1
    assert "2 consecutive non-finite losses" in event["reason"]
    assert event["lr"] == pytest.approx(cfg.lr * 0.5)
    assert [r["epoch"] for r in result.records] == [0, 1, 2]
    assert all(r["skipped_steps"] == 0 for r in result.records)  # the kept epochs are clean
    out = buf.getvalue()
    assert "epoch 2 diverged" in out and "rolled back to the state after epoch 1" in out
    state = _finite_state(run)
    assert state["rollbacks"] == 1 and state["epoch"] == 3
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(cfg.lr * 0.5)
    model, _ = load_model(run)
    assert non_finite(model.state_dict()) == []


def test_a_single_nan_step_is_only_skipped(tmp_path, tiny_domains, monkeypatch):
    _nan_on(monkeypatch, calls={3})
    result = train(_cfg(tmp_path, tiny_domains))
    rows = _rows(tmp_path / "run")
    assert not any("event" in r for r in rows)
    assert [r["skipped_steps"] for r in result.records] == [0, 1, 0]
    assert rows[1]["max_skip_run"] == 1
    assert load_state(tmp_path / "run" / "state.pt")["rollbacks"] == 0


@pytest.mark.parametrize("recipe", ["paper", "real"])
def test_gives_up_after_max_rollbacks_exit_1(tmp_path, tiny_domains, monkeypatch, recipe):
    """Rollbacks lower the learning rate; with an lr schedule they lower its base."""
    _nan_on(monkeypatch, start=3)  # every step from epoch 1 on
    s, _ = tiny_domains
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'recipe = "{recipe}"\n'
        f'source = "{s.as_posix()}"\nmode = "source-only"\nbackbone = "resnet18"\n'
        'image_size = 64\nbatch_size = 2\nsteps_per_epoch = 2\npretrain_epochs = 1\n'
        'adv_epochs = 2\nsamples = 0\ndevice = "cpu"\namp = "off"\n'
        "divergence_steps = 2\nmax_rollbacks = 2\nrollback_lr_factor = 0.1\n"
    )
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--out", str(run)])
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "training diverged in epoch 2" in errors[0]
    assert "max_rollbacks = 2" in res.output and "lower lr" in res.output
    rows = _rows(run)
    assert [r.get("event", r.get("phase")) for r in rows] == ["seg", "rollback", "rollback"]
    state = _finite_state(run)
    assert state["epoch"] == 1 and state["rollbacks"] == 2
    group = state["opt_g"]["param_groups"][0]
    if recipe == "paper":
        assert group["lr"] == pytest.approx(1e-3 * 0.01) and "base_lr" not in group
    else:  # the schedule scales the lowered base at every step
        assert group["base_lr"] == pytest.approx(1e-3 * 0.01)
        assert 0 < group["lr"] <= group["base_lr"]


def test_non_finite_weights_roll_back_and_are_never_written(tmp_path, tiny_domains,
                                                            monkeypatch):
    trainer = Trainer(_cfg(tmp_path, tiny_domains, adv_epochs=1))
    real_step = trainer.step
    calls: list[int] = []

    def poisoned(*args, **kwargs):
        real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # a finite loss whose update still blew a weight up
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("inf"))

    monkeypatch.setattr(trainer, "step", poisoned)
    result = trainer.fit()
    rows = _rows(tmp_path / "run")
    assert [r.get("event", r.get("phase")) for r in rows] == ["seg", "rollback", "seg"]
    assert "non-finite weights" in rows[1]["reason"]
    assert result.epochs == 2
    _finite_state(tmp_path / "run")


def test_rollback_off_refuses_to_continue_with_nan_weights(tmp_path, tiny_domains,
                                                            monkeypatch):
    trainer = Trainer(_cfg(tmp_path, tiny_domains, divergence_steps=0))
    real_step = trainer.step

    def poisoned(*args, **kwargs):
        real_step(*args, **kwargs)
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(trainer, "step", poisoned)
    with pytest.raises(RunFailure, match="rollback is off"):
        trainer.fit()
    state = _finite_state(tmp_path / "run")
    assert state["epoch"] == 0  # the first epoch's NaN weights never reached the disk
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_save_model_refuses_nan_weights(tmp_path):
    net = SegmentationNet("resnet18", decoder_channels=(16, 16, 8, 8, 8))
    with torch.no_grad():
        next(net.parameters())[0] = float("nan")
    with pytest.raises(RunFailure, match="non-finite"):
        save_model(tmp_path / "run", net, {"image_size": 64})
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert not list((tmp_path / "run").glob(".*"))  # no temporary file left either


def test_divergence_fields_are_validated(tmp_path, tiny_domains):
    from stainadapt.errors import InputError

    with pytest.raises(InputError, match="rollback_lr_factor"):
        _cfg(tmp_path, tiny_domains, rollback_lr_factor=1.5).validate()
    with pytest.raises(InputError, match="max_rollbacks"):
        _cfg(tmp_path, tiny_domains, max_rollbacks=-1).validate()
