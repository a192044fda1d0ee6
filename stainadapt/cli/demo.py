"""``stainadapt demo``: source-only vs UDA on the embedded synthetic PASM -> Masson data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, is_tty, run_guarded, stdout

app = typer.Typer()


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the runs and results.json.")] = Path(
        "stainadapt-demo"),
    quick: Annotated[bool, typer.Option(
        "--quick", help="A tiny budget (under a minute) for CI; also STAINADAPT_DEMO_QUICK=1.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(
        min=0, help="Seed of the splits, crops and initial weights. One seed does not settle "
        "source-only vs UDA at this budget: compare a few.")] = 0,
) -> None:
    """Train source-only, then adapt it with UDA (mirrored + shape) on synthetic PASM -> Masson."""
    from ..engine.demo import quick_requested, results_table, run_demo

    is_quick = quick_requested(quick)
    result = run_guarded(lambda: run_demo(out, quick=is_quick, console=console,
                                          progress=is_tty(), device=device, seed=seed))
    stdout.print(results_table(result))
    val, test = result["uda_beats_source_only"], result["uda_beats_source_only_on_test"]
    if not is_quick and not (val and test):
        verdict = {True: "beat", False: "did not beat"}
        stdout.print(f"note: UDA {verdict[val]} source-only on the validation split and "
                     f"{verdict[test]} it on the test draw (seed {seed}). Over four seeds "
                     "at this budget the adversarial term lowers Masson Dice; self-training "
                     "on the source model's own predictions raised it on every seed "
                     "(benchmarks/RESULTS.md; the recipe: docs/guide.md, 'Choosing a mode')")
    stdout.print(
        f"runs: {out / 'source-only'}, {out / 'source-only-longer'} and {out / 'uda'} "
        "(model.safetensors, metrics.jsonl); "
        f"curves: {out / 'uda' / 'curves.png'}; overlays: {out / 'uda' / 'samples'}/; "
        f"table: {out / 'results.json'}; {result['seconds']:.0f} s"
        + (" (quick budget: not a meaningful comparison)" if is_quick else "")
    )
