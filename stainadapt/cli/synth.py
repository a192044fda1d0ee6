"""``stainadapt synth``: write synthetic renal tissue tiles in one or more stains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, progress_bar, run_guarded

app = typer.Typer()


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (one sub-folder per stain).")],
    stain: Annotated[
        list[str] | None,
        typer.Option("--stain", "-s", help="Stain to render: pasm, masson or pas (repeatable)."),
    ] = None,
    n: Annotated[int, typer.Option("-n", "--count", help="Tiles per stain.")] = 100,
    size: Annotated[int, typer.Option("--size", help="Tile side in pixels.")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Generate simulated kidney tissue (images + glomerulus masks) in the given stains."""
    from ..data import synth as synth_mod

    stains = stain or ["pasm", "masson"]
    with progress_bar() as bar:
        task = bar.add_task("synth", total=n * len(stains))
        run_guarded(
            lambda: synth_mod.generate(
                out,
                stains=stains,
                n=n,
                size=size,
                seed=seed,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        )
    console.print(f"wrote {n} tiles x {len(stains)} stain(s) of {size} px to {out}")
