"""G against segmentation_models_pytorch's ``Unet("resnet34")``: size, FLOPs, train step.

Run: ``python -m pytest benchmarks/bench_models.py`` (pytest-benchmark prints the
timing table). Targets, measured in the same process because the machine
is shared and noisy: parameters within 10 %, forward FLOPs within 15 %, and a train step
(batch 4, 256 px, Adam, BCE) no slower than 1.15x smp's. ``STAINADAPT_BENCH_SIZE`` and
``STAINADAPT_BENCH_BATCH`` change the input.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from stainadapt.models.summary import count_params, forward_flops
from stainadapt.models.unet import SegmentationNet

smp = pytest.importorskip("segmentation_models_pytorch")

SIZE = int(os.environ.get("STAINADAPT_BENCH_SIZE", "256"))
BATCH = int(os.environ.get("STAINADAPT_BENCH_BATCH", "4"))


def build(which: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if which == "stainadapt":
        return SegmentationNet("resnet34")
    return smp.Unet("resnet34", encoder_weights=None, classes=1)


@pytest.fixture(scope="module")
def models():
    return {name: build(name) for name in ("stainadapt", "smp")}


def make_step(model: torch.nn.Module):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    y = (torch.rand(BATCH, 1, SIZE, SIZE, generator=gen) > 0.5).float()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def test_params_within_10_percent(models, benchmark):
    ours, ref = count_params(models["stainadapt"]), count_params(models["smp"])
    benchmark.extra_info.update(params_stainadapt=ours, params_smp=ref)
    benchmark.pedantic(lambda: None, rounds=1)
    assert abs(ours / ref - 1) <= 0.10, (ours, ref)


def test_forward_flops_within_15_percent(models, benchmark):
    x = torch.zeros(1, 3, SIZE, SIZE)
    ours, _ = forward_flops(models["stainadapt"].eval(), x)
    ref, _ = forward_flops(models["smp"].eval(), x)
    benchmark.extra_info.update(gflops_stainadapt=ours / 1e9, gflops_smp=ref / 1e9)
    benchmark.pedantic(lambda: None, rounds=1)
    assert abs(ours / ref - 1) <= 0.15, (ours, ref)


@pytest.mark.parametrize("which", ["stainadapt", "smp"])
def test_train_step(models, benchmark, which):
    step = make_step(models[which])
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


def test_train_step_no_slower_than_115_percent_of_smp(models, benchmark):
    """Interleaved timing of both steps; the medians are compared."""
    steps = {name: make_step(model) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(3):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    ours, ref = (statistics.median(times[n]) for n in ("stainadapt", "smp"))
    benchmark.extra_info.update(step_s_stainadapt=ours, step_s_smp=ref, ratio=ours / ref)
    benchmark.pedantic(lambda: None, rounds=1)
    assert ours <= 1.15 * ref, f"train step {ours:.3f}s vs smp {ref:.3f}s"
