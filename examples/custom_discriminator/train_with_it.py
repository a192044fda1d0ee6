"""Use patch_disc.py without packaging it: register it, check it, train with it.

    python examples/custom_discriminator/train_with_it.py [WORK] [--tiny]
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so that patch_disc imports

from patch_disc import create_patch

import stainadapt
from stainadapt.data.synth import generate
from stainadapt.testing import check_discriminator

tiny = "--tiny" in sys.argv or os.environ.get("STAINADAPT_EXAMPLE_TINY") == "1"
args = [a for a in sys.argv[1:] if a != "--tiny"]
work = Path(args[0] if args else tempfile.mkdtemp(prefix="stainadapt-patch-"))

# 1. Register the factory under a name: from now on "patch" works like a built-in here.
stainadapt.register("discriminators", "patch", create_patch)

# 2. The contract every built-in passes: heads, shapes, gradients, options, state_dict.
check_discriminator("patch:width=16", device="cpu")

# 3. Train PASM -> Masson with it next to the shape discriminator.
generate(work / "data", n=6 if tiny else 40, size=96 if tiny else 256)
budget = (dict(image_size=64, batch_size=2, pretrain_epochs=1, disc_epochs=1, adv_epochs=1,
               steps_per_epoch=1, samples=0) if tiny else
          dict(image_size=128, pretrain_epochs=6, disc_epochs=2, adv_epochs=10,
               steps_per_epoch=10, lr=3e-4, disc_lr=1e-4, dice_weight=1.0))
config = stainadapt.TrainConfig(
    source=str(work / "data/pasm"), target=str(work / "data/masson"), mode="uda",
    discs=["patch:layer=f4,width=32,weight=0.02", "shape"], backbone="resnet18",
    out=str(work / "run"), **budget)
result = stainadapt.train(config)
last = result.records[-1]
print(f"run {result.run_dir}: discriminator accuracies {last.get('disc_acc')}")
