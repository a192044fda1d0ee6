"""Held-out discriminator accuracy and gradient norms: recorded, informative, harmless."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from stainadapt.config import TrainConfig
from stainadapt.engine.callbacks import AdversarialDiagnostics, default_callbacks
from stainadapt.engine.callbacks.diagnostics import measure, stuck_heads
from stainadapt.engine.steps import update_discriminators
from stainadapt.engine.trainer import Trainer
from stainadapt.testing import make_domain


@pytest.fixture(scope="module")
def uda_domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    return (make_domain(root / "s", "source", n=5, size=64),
            make_domain(root / "t", "target", n=5, size=64))


def _config(uda_domains, out, **kw) -> TrainConfig:
    s, t = uda_domains
    fields = dict(source=str(s), target=str(t), out=str(out), mode="uda",
                  discs=["mirrored", "shape"], backbone="resnet18", image_size=64,
                  batch_size=2, pretrain_epochs=1, disc_epochs=1, adv_epochs=1,
                  steps_per_epoch=2, val_fraction=0.4, augment=False, samples=0,
                  device="cpu", seed=0)
    return TrainConfig(**{**fields, **kw})


def test_heldout_accuracy_and_gradient_norms_are_in_metrics(uda_domains, tmp_path):
    Trainer(_config(uda_domains, tmp_path / "run")).fit()
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    heads = {"mirrored.encoder", "mirrored.decoder", "shape.shape"}
    assert "disc_heldout" not in rows[0] and rows[0]["phase"] == "seg"
    for row in rows[1:]:
        assert set(row["disc_heldout"]) == heads
        assert all(0.0 <= v <= 1.0 for v in row["disc_heldout"].values())
        assert set(row["grad_norm"]) == heads | {"seg"}
        # every head has a positive weight, so each sends a gradient into G
        assert all(v > 0 for v in row["grad_norm"].values()), row["grad_norm"]


def test_diagnostics_do_not_change_training(uda_domains, tmp_path):
    without = [cb for cb in default_callbacks() if not isinstance(cb, AdversarialDiagnostics)]
    a = Trainer(_config(uda_domains, tmp_path / "a"))
    a.fit()
    b = Trainer(_config(uda_domains, tmp_path / "b"), callbacks=without)
    b.fit()
    assert "disc_heldout" in a.records[-1] and "disc_heldout" not in b.records[-1]
    for (key, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                             strict=True):
        assert torch.equal(va, vb), key
    for da, db in zip(a.discs, b.discs, strict=True):
        for va, vb in zip(da.state_dict().values(), db.state_dict().values(), strict=True):
            assert torch.equal(va, vb)


def test_heldout_accuracy_follows_the_discriminator(uda_domains, tmp_path):
    """Training the discriminators on the held-out crops raises their held-out accuracy."""
    t = Trainer(_config(uda_domains, tmp_path / "run", discs=["single:layer=f4"],
                        disc_lr=1e-2))
    batch = AdversarialDiagnostics()._batch(t)
    before, norms = measure(t, batch)
    t.model.eval()  # the features the measurement reads
    with torch.no_grad():
        logits, feats = t.model(batch.x, return_features=True)
    acc: dict[str, torch.Tensor] = {"skipped": torch.zeros(())}
    for _ in range(30):
        update_discriminators(t, batch, logits, feats, acc)
    after, _ = measure(t, batch)
    assert after["single.single"] > before["single.single"], (before, after)
    assert after["single.single"] >= 0.9
    assert norms["seg"] > 0


def test_stuck_heads_and_the_end_of_run_warning(uda_domains, tmp_path):
    adv = {"phase": "adv"}
    records = [{"phase": "seg"},
               {**adv, "disc_heldout": {"a.x": 0.5, "b.y": 0.97, "c.z": 0.5}},
               {**adv, "disc_heldout": {"a.x": 0.52, "b.y": 1.0, "c.z": 0.8}}]
    assert stuck_heads(records) == {"a.x": "chance", "b.y": "certainty"}
    assert stuck_heads([{"phase": "seg"}]) == {}

    out = io.StringIO()
    t = Trainer(_config(uda_domains, tmp_path / "run"),
                console=Console(file=out, width=200))
    t.records = records
    AdversarialDiagnostics().on_fit_end(t)
    text = out.getvalue()
    assert text.count("\n") == 1
    assert "a.x at chance" in text and "b.y at certainty" in text and "c.z" not in text
