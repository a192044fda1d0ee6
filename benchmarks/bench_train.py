"""Cost of the trainer's steps: segmentation, uda (per discriminator set) and sda.

Run: ``python -m pytest benchmarks/bench_train.py`` (pytest-benchmark prints the timing
table). Each case times the engine's own step (``Trainer.step``: G forward on S and T,
the discriminators, G's backward and Adam, every discriminator's backward and Adam) on
fixed batches, batch 4 per domain, 256 px, resnet34, augmentation off so only the
networks are measured. ``STAINADAPT_BENCH_SIZE``, ``STAINADAPT_BENCH_BATCH`` and
``STAINADAPT_BENCH_BACKBONE`` change that (``STAINADAPT_BENCH_DEVICE``, ``..._AMP`` too).

The target (recorded, not asserted): the uda step with ``mirrored`` + ``shape``
costs no more than 1.2x what its FLOPs predict from the plain segmentation step measured
in the same run, ``time_adv / time_seg <= 1.2 * flops_adv / flops_seg``. FLOPs of a whole
step (forward and backward) are counted with ``torch.utils.flop_counter``. The ratio test
prints both sides and stores them in ``extra_info``.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stainadapt.config import TrainConfig
from stainadapt.engine.trainer import Trainer
from stainadapt.testing import make_domain

SIZE = int(os.environ.get("STAINADAPT_BENCH_SIZE", "256"))
BATCH = int(os.environ.get("STAINADAPT_BENCH_BATCH", "4"))
BACKBONE = os.environ.get("STAINADAPT_BENCH_BACKBONE", "resnet34")
DEVICE = os.environ.get("STAINADAPT_BENCH_DEVICE", "auto")
AMP = os.environ.get("STAINADAPT_BENCH_AMP", "off")

CASES = {
    "seg": ("source-only", []),
    "uda-single": ("uda", ["single:layer=f4"]),
    "uda-concat": ("uda", ["concat"]),
    "uda-mirrored": ("uda", ["mirrored"]),
    "uda-mirrored+shape": ("uda", ["mirrored", "shape"]),
    "sda-mirrored+shape": ("sda", ["mirrored", "shape"]),
}


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-domains")
    return (make_domain(root / "s", "source", n=2, size=SIZE),
            make_domain(root / "t", "target", n=2, size=SIZE))


def build(case: str, domains, out: Path):
    mode, discs = CASES[case]
    s, t = domains
    cfg = TrainConfig(source=str(s), target=str(t), out=str(out), mode=mode, discs=discs,
                      backbone=BACKBONE, image_size=SIZE, device=DEVICE, amp=AMP,
                      batch_size=BATCH, augment=False,
                      val_fraction=0.0, steps_per_epoch=1, samples=0, select="last",
                      pretrain_epochs=1, disc_epochs=0, adv_epochs=0 if mode != "uda" else 1)
    trainer = Trainer(cfg)
    gen = torch.Generator().manual_seed(0)

    def batch():
        return {"image": torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8,
                                       generator=gen),
                "mask": (torch.rand(BATCH, 1, SIZE, SIZE, generator=gen) > 0.5).float()}

    src, tgt = batch(), batch()
    phase = "seg" if mode == "source-only" else "adv"
    acc = {"skipped": torch.zeros(())}

    def step() -> None:
        trainer.step(phase, src, tgt if mode != "source-only" else None, acc)

    return step


def step_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def median_time(step, rounds: int = 3) -> float:
    step()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@pytest.mark.parametrize("case", list(CASES))
def test_step(case, domains, tmp_path, benchmark):
    step = build(case, domains, tmp_path / case)
    benchmark.extra_info["gflops_step"] = step_flops(step) / 1e9
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


def test_adv_over_seg_ratio(domains, tmp_path, benchmark):
    seg = build("seg", domains, tmp_path / "seg")
    adv = build("uda-mirrored+shape", domains, tmp_path / "adv")
    flops_seg, flops_adv = step_flops(seg), step_flops(adv)
    # interleave the measurements: the machine is shared and its speed drifts
    t_seg, t_adv = [], []
    for _ in range(3):
        t_seg.append(median_time(seg, 1))
        t_adv.append(median_time(adv, 1))
    time_ratio = statistics.median(t_adv) / statistics.median(t_seg)
    flops_ratio = flops_adv / flops_seg
    benchmark.extra_info.update(
        time_seg_s=statistics.median(t_seg), time_adv_s=statistics.median(t_adv),
        gflops_seg=flops_seg / 1e9, gflops_adv=flops_adv / 1e9,
        time_ratio=time_ratio, flops_ratio=flops_ratio,
        target=f"time_ratio <= 1.2 * flops_ratio = {1.2 * flops_ratio:.3f}",
    )
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\ntime_adv/time_seg = {time_ratio:.3f}; flops_adv/flops_seg = {flops_ratio:.3f}; "
          f"target <= {1.2 * flops_ratio:.3f}")
