"""The DANN ramp on the adversarial weights (``adv_ramp``)."""

from __future__ import annotations

import math

import pytest

from stainadapt.config import TrainConfig
from stainadapt.engine.losses import adv_ramp_scale
from stainadapt.engine.steps import STEPS
from stainadapt.engine.trainer import Trainer
from stainadapt.errors import InputError

PHASES = ["seg", "seg", "disc", "adv", "adv", "adv", "adv", "self"]


def test_dann_ramp_goes_from_zero_to_one_over_the_adv_steps_only():
    at = [adv_ramp_scale("dann", PHASES, e, s, 5) for e in range(3, 7) for s in range(5)]
    assert at[0] == 0.0 and all(b > a for a, b in zip(at, at[1:], strict=False))
    assert at[10] == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # half-way: p = 0.5
    assert at[-1] > 0.99
    for epoch in (0, 2, 7):  # seg, disc and self epochs keep their weights
        assert adv_ramp_scale("dann", PHASES, epoch, 0, 5) == 1.0
    assert {adv_ramp_scale("none", PHASES, e, 0, 5) for e in range(8)} == {1.0}
    with pytest.raises(InputError, match="adv_ramp 'linear' is not one of none, dann"):
        TrainConfig(source="s", target="t", discs=["shape"], adv_ramp="linear").validate()


@pytest.mark.parametrize("ramp", ["none", "dann"])
def test_the_trainer_scales_the_adversarial_terms_by_the_ramp(tmp_path, domains, ramp):
    s, t = domains
    cfg = TrainConfig(source=str(s), target=str(t), out=str(tmp_path / "run"), mode="uda",
                      discs=["shape"], backbone="resnet18", image_size=64, batch_size=2,
                      steps_per_epoch=2, pretrain_epochs=0, disc_epochs=0, adv_epochs=2,
                      device="cpu", samples=0, adv_ramp=ramp)
    scales, extra = [], []

    def recording_adv_step(t, batch, acc):
        scales.append(t.adv_scale)
        before = {k: float(acc[k]) if k in acc else 0.0 for k in ("g_total", "seg",
                                                                  "adv_shape.shape")}
        STEPS["adv"](t, batch, acc)
        added = {k: float(acc[k]) - v for k, v in before.items()}
        # G's loss is L_seg plus the weighted term (shape's weight 0.1) times the ramp
        extra.append((added["g_total"] - added["seg"], 0.1 * t.adv_scale
                      * added["adv_shape.shape"]))

    Trainer(cfg, steps={"adv": recording_adv_step}).fit()
    if ramp == "none":
        assert scales == [1.0] * 4
    else:
        assert scales == pytest.approx([2 / (1 + math.exp(-10 * k / 4)) - 1 for k in range(4)])
        assert scales[0] == 0.0
    for got, want in extra:
        assert got == pytest.approx(want, abs=1e-5)
    assert extra[-1][0] > 0  # the adversarial term reaches G
