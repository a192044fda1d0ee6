"""BatchNorm statistics of the validated and saved model, re-estimated on plain crops.

``bn_recalibration`` batches of uniformly placed, unaugmented crops of the source
training images (the same crops every time) replace the running averages of the
augmented, glomerulus-centred training batches, so validation, pseudo-labels and the
saved model normalise like the images they will see (:mod:`stainadapt.models.batchnorm`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..schedule import self_train_round
from .domains import prepare_batch
from .steps import autocast

__all__ = ["needs_statistics", "recalibrate"]


def needs_statistics(t: Any, epoch: int) -> bool:
    """Whether ``epoch``'s model is read: validated, or the last of a stage.

    Without validation images only the model at the end of a phase or of a
    self-training round is used (saved, or labelling the next round's targets).
    """
    dom = t.domains
    if dom.src_val or any(s.mask is not None for s in dom.tgt_val):
        return True
    if epoch + 1 >= len(t.phases) or t.phases[epoch + 1] != t.phases[epoch]:
        return True
    return bool((self_train_round(t.cfg, epoch + 1) or (0, False))[1])


def recalibrate(t: Any) -> None:
    """Re-estimate ``t.eval_model``'s BatchNorm statistics (trainer ``t``)."""
    from ..data.dataset import CropDataset
    from ..models.batchnorm import recalibrate_batchnorm

    cfg = t.cfg
    ds = getattr(t, "_recalibration_crops", None)
    if ds is None:
        ds = CropDataset(t.domains.src_train, cfg.image_size,
                         length=cfg.bn_recalibration * cfg.batch_size,
                         seed=cfg.seed * 10 + 7, with_masks=False,
                         downsample=cfg.downsample)
        t._recalibration_crops = ds

    def batches():
        for start in range(0, len(ds), cfg.batch_size):
            items = [ds[i]["image"] for i in range(start, start + cfg.batch_size)]
            x, _ = prepare_batch({"image": torch.stack(items)}, t.device, t.normalizer, None)
            yield x

    with autocast(t):
        recalibrate_batchnorm(t.eval_model, batches())
