"""The sign of G's adversarial term: with alpha > 0, G's features fool the discriminator.

Source and target differ by a colour shift only. From the same initial G and D (same
seed), one run trains with alpha = 0 and one with alpha = 1; everything else is equal
and deterministic. The discriminator separates the domains easily when G ignores it
(alpha = 0) and is held near chance when G fights it (alpha > 0).
"""

from __future__ import annotations

import pytest
import torch

from stainadapt.config import TrainConfig
from stainadapt.engine.losses import generator_adv_term
from stainadapt.engine.trainer import train
from stainadapt.testing import make_domain


def test_generator_term_falls_as_the_discriminator_errs():
    true = torch.tensor([1.0, 0.0])
    right, wrong = torch.tensor([4.0, -4.0]), torch.tensor([-4.0, 4.0])
    for kind in ("minimax", "flip"):
        assert generator_adv_term(wrong, true, kind) < generator_adv_term(right, true, kind)
    with pytest.raises(ValueError, match="adv_loss"):
        generator_adv_term(right, true, "other")


@pytest.mark.parametrize("adv_loss", ["minimax", "flip"])
def test_adversarial_term_lowers_discriminator_accuracy(tmp_path, adv_loss):
    s = make_domain(tmp_path / "s", "source", n=6, size=64)
    t = make_domain(tmp_path / "t", "target", n=6, size=64)
    stats = {}
    for weight in (0.0, 1.0):
        cfg = TrainConfig(
            source=str(s), target=str(t), out=str(tmp_path / f"run{weight}"), mode="uda",
            discs=[f"single:layer=f4,weight={weight}"], backbone="resnet18", image_size=64,
            batch_size=2, pretrain_epochs=0, disc_epochs=1, adv_epochs=3, steps_per_epoch=6,
            val_fraction=0.0, augment=False, samples=0, device="cpu", seed=0,
            adv_loss=adv_loss,
        )
        adv = [r for r in train(cfg).records if r["phase"] == "adv"]
        acc = sum(r["disc_acc"]["single.single"] for r in adv) / len(adv)
        loss = sum(r["losses"]["d_single.single"] for r in adv) / len(adv)
        stats[weight] = (acc, loss)
    (acc0, loss0), (acc1, loss1) = stats[0.0], stats[1.0]
    assert acc1 < acc0 - 0.1, stats
    assert loss1 > loss0, stats
