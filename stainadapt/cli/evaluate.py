"""``stainadapt evaluate``: Dice, IoU, accuracy, precision and recall of predicted masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import console, run_guarded, stdout

app = typer.Typer()


@app.command("evaluate")
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Folder of predicted masks.")],
    truth: Annotated[Path, typer.Argument(help="Folder of ground-truth masks (paired by name).")],
    threshold: Annotated[
        float | None,
        typer.Option(help="Binarise predictions as value > T (for probability maps)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per-image metrics, their mean ± std, and pooled over all pixels.

    Empty prediction vs empty ground truth counts as Dice 1 (see stainadapt.metrics).
    """
    from ..metrics import METRICS, evaluate_folders

    report = run_guarded(lambda: evaluate_folders(pred, truth, threshold=threshold))
    for kind, paths in (
        ("prediction(s) without ground truth", report.unmatched_predictions),
        ("ground-truth mask(s) without prediction", report.unmatched_truths),
    ):
        if paths:
            shown = ", ".join(p.name for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
            console.print(f"[yellow]warning:[/] {len(paths)} {kind}: {shown}", highlight=False)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{pred} vs {truth}")
    table.add_column("image")
    for m in METRICS:
        table.add_column(m, justify="right")
    for row in report.images:
        table.add_row(row["name"], *(f"{row[m]:.4f}" for m in METRICS))
    table.add_section()
    table.add_row(
        "mean ± std",
        *(f"{report.mean[m]:.4f} ± {report.std[m]:.4f}" for m in METRICS),
        style="bold",
    )
    table.add_row("pooled", *(f"{report.pooled[m]:.4f}" for m in METRICS), style="bold")
    stdout.print(table)
