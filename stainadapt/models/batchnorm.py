"""Re-estimating a network's BatchNorm statistics on chosen images.

In training mode BatchNorm normalises with the batch's own statistics and keeps a
running average (momentum 0.1) for prediction. With small, heavily augmented batches
that average follows the augmentation, not the images G will predict on: on real
biopsy tiles a G whose training-mode output scored 0.3 Dice scored 0.0 in eval mode,
and 0.27 once its statistics were re-estimated on plain crops (docs/experiments.md).
:func:`recalibrate_batchnorm` replaces every BatchNorm layer's running statistics by
their plain average over given batches (Wu & Johnson's "precise BN"; on the images to
be predicted it is AdaBN, Li et al. 2016). Weights are not touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..config import NORMS

__all__ = ["NORMS", "batchnorm_layers", "recalibrate_batchnorm", "replace_batchnorm",
           "start_statistics", "statistics_kept_in"]



def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` that tracks running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set ``model``'s BatchNorm running statistics to their average over ``batches``.

    ``batches``: input tensors ``(B, C, H, W)`` as the model takes them. Each layer's
    statistics restart and are averaged with equal weight per batch (momentum ``None``);
    the layers' momentum and the model's train/eval mode are restored afterwards.
    Returns the number of batches seen (0 leaves the statistics as they were).
    """
    was_training = model.training
    model.train()
    # a layer that stays in eval mode under train() (a frozen encoder's) keeps its own
    layers = [m for m in batchnorm_layers(model) if m.training]
    if not layers:  # per-sample normalisation: nothing to estimate
        model.train(was_training)
        return 0
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(),
              m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += 1
    finally:
        model.train(was_training)
        for m, (mean, var, count, momentum) in zip(layers, saved, strict=True):
            m.momentum = momentum
            if seen == 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
    return seen


def _training_layers(model: nn.Module, every_layer: bool = False
                     ) -> Iterator[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """``(state-dict prefix, layer)`` of every BatchNorm layer in training mode (or every
    one)."""
    names = {id(m): n for n, m in model.named_modules()}
    for m in batchnorm_layers(model):
        if m.training or every_layer:
            yield (f"{names[id(m)]}." if names[id(m)] else ""), m


_STATS = ("running_mean", "running_var")


@contextlib.contextmanager
def statistics_kept_in(model: nn.Module, store: dict[str, torch.Tensor],
                       every_layer: bool = False) -> Iterator[None]:
    """Run ``model`` with the BatchNorm running statistics held in ``store``, then put its own back.

    Domain-specific statistics (after Chang et al.'s DSBN, 2019, with shared affine
    terms): the target half of a training batch updates ``store`` instead of the
    statistics the source half keeps. ``store`` maps ``<layer>.running_mean`` /
    ``<layer>.running_var`` (the keys of ``model.state_dict()``, the format of
    :func:`stainadapt.inference.adapt.adapted_state`) to tensors; a layer missing from it
    keeps the model's own (:func:`start_statistics` gives every training layer an entry
    first). Only layers in training mode take part, unless ``every_layer``: then every
    layer in ``store`` reads its statistics there (eval mode: the target statistics
    predict, nothing is updated).

    The layers' buffer *tensors* are swapped, not their values: autograd keeps the
    source pass's statistics tensors for its backward, and an in-place copy into them
    would invalidate it.
    """
    swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
    for prefix, m in _training_layers(model, every_layer):
        for name in _STATS:
            if prefix + name not in store:
                continue
            swapped.append((m, name, m._buffers[name]))
            m._buffers[name] = store[prefix + name]
    try:
        yield
    finally:
        for m, name, own in swapped:
            m._buffers[name] = own


def start_statistics(model: nn.Module, store: dict[str, torch.Tensor]) -> None:
    """Copy the model's running statistics into ``store`` for every layer it lacks."""
    for prefix, m in _training_layers(model):
        for name in _STATS:
            if prefix + name not in store:
                store[prefix + name] = getattr(m, name).detach().clone()


def replace_batchnorm(module: nn.Module, norm: str) -> nn.Module:
    """``module`` with every 2-D BatchNorm replaced by per-sample normalisation, in place.

    ``norm``: ``"batch"`` (nothing changes), ``"group"`` (GroupNorm, ``gcd(32, C)``
    groups) or ``"instance"`` (GroupNorm with one group per channel). Affine weights and
    biases are carried over; running statistics are dropped (there are none to keep). A
    network whose statistics come from each input alone predicts an image the same way
    whatever else is in the batch, and needs no statistics that fit the test stain.
    """
    import math

    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if norm == "batch":
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            groups = c if norm == "instance" else math.gcd(32, c)
            gn = nn.GroupNorm(groups, c, eps=child.eps, affine=child.affine)
            if child.affine:
                with torch.no_grad():
                    gn.weight.copy_(child.weight)
                    gn.bias.copy_(child.bias)
            setattr(module, name, gn)
        else:
            replace_batchnorm(child, norm)
    return module
