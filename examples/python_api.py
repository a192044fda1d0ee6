"""Train, predict and evaluate from Python: python examples/python_api.py [WORK] [--tiny]."""

import os
import sys
import tempfile
from pathlib import Path

import stainadapt
from stainadapt.data.synth import generate

tiny = "--tiny" in sys.argv or os.environ.get("STAINADAPT_EXAMPLE_TINY") == "1"
args = [a for a in sys.argv[1:] if a != "--tiny"]
work = Path(args[0] if args else tempfile.mkdtemp(prefix="stainadapt-api-"))

# Synthetic PASM (labelled source) and Masson (target); a held-out Masson test set.
generate(work / "data", stains=("pasm", "masson"), n=6 if tiny else 40, size=96 if tiny else 256)
generate(work / "test", stains=("masson",), n=3 if tiny else 12, size=96 if tiny else 256, seed=1)

budget = (dict(image_size=64, batch_size=2, pretrain_epochs=1, disc_epochs=1, adv_epochs=1,
               steps_per_epoch=1, samples=0) if tiny else
          dict(image_size=128, pretrain_epochs=6, disc_epochs=2, adv_epochs=10,
               steps_per_epoch=10, lr=3e-4, disc_lr=1e-4, dice_weight=1.0))
config = stainadapt.TrainConfig(
    source=str(work / "data/pasm"), target=str(work / "data/masson"), mode="uda",
    discs=["mirrored", "shape"], backbone="resnet18", out=str(work / "run"), **budget)
result = stainadapt.train(config)  # writes the run folder; returns what it did
print(f"trained {result.epochs} epochs in {result.seconds:.0f} s -> {result.run_dir}")

report = stainadapt.predict([work / "test/masson/images"], result.run_dir, work / "pred")
report.raise_for_failures()
scores = stainadapt.evaluate(work / "pred", work / "test/masson/masks")
for row in scores.images:
    print(f"{row['name']}: Dice {row['dice']:.3f}")
print(f"mean Dice {scores.mean['dice']:.3f} ± {scores.std['dice']:.3f} "
      f"over {len(scores.images)} images; pooled {scores.pooled['dice']:.3f}")
