"""What an encoder costs G: parameters, forward GFLOPs, peak memory and G step time.

Each encoder runs in a process of its own (so peak memory is its own): G with random
weights, ``--batch`` images of ``--size`` px, BCE on a random mask, backward and Adam;
one warm-up step, then the mean of ``--steps`` timed steps. Peak memory is the process's
peak resident set (``ru_maxrss``) minus its size just before the model was built. The
table for docs/encoders.md was made with one thread on the CPU:

    OMP_NUM_THREADS=1 python benchmarks/encoder_costs.py --md encoder-costs.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ENCODERS = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "efficientnetv2_rw_s",
            "regnetx_002", "convnext_atto", "convnext_tiny")


def _one(name: str, size: int, batch: int, steps: int) -> dict:
    import resource
    import time

    import torch
    import torch.nn.functional as F

    from stainadapt.models.summary import model_summary
    from stainadapt.models.unet import SegmentationNet

    torch.set_num_threads(1)
    summary = model_summary(name, (), size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    net = SegmentationNet(name).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.9).float()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"encoder": name, "params_m": summary["generator"]["params"] / 1e6,
            "gflops": summary["generator"]["gflops"],
            "stem": summary["encoder"]["stem"],
            "peak_mib": (peak - before) / 1024, "step_s": sum(times) / len(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", default=",".join(ENCODERS))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one, args.size, args.batch, args.steps)))
        return 0
    rows = []
    for name in args.encoders.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--size",
                              str(args.size), "--batch", str(args.batch), "--steps",
                              str(args.steps)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = ["| encoder | G params (M) | G GFLOPs / image | peak memory, train step (MiB) "
             "| train step (s) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        stem = " (+ stem)" if r["stem"] else ""
        lines.append(f"| `{r['encoder']}`{stem} | {r['params_m']:.1f} | {r['gflops']:.1f} | "
                     f"{r['peak_mib']:.0f} | {r['step_s']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
