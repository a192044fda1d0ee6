"""``stainadapt evaluate``: Dice, IoU, accuracy, precision and recall of predicted masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import console, run_guarded, stdout

app = typer.Typer()

_OBJECTS = "Objects (--instances)"


@app.command("evaluate")
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Folder of predicted masks.")],
    truth: Annotated[Path, typer.Argument(help="Folder of ground-truth masks (paired by name).")],
    threshold: Annotated[
        float | None,
        typer.Option(help="Binarise predictions as value > T (for probability maps)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    instances: Annotated[
        bool,
        typer.Option(
            "--instances",
            help="Add object-level precision, recall and F1 (glomeruli matched at IoU > --iou).",
            rich_help_panel=_OBJECTS,
        ),
    ] = False,
    iou: Annotated[
        float,
        typer.Option("--iou", help="IoU a match must exceed.", rich_help_panel=_OBJECTS),
    ] = 0.5,
    min_area: Annotated[
        float,
        typer.Option(
            "--min-area",
            help="Ignore objects smaller than this (um2 with --mpp, else pixels), both sides.",
            rich_help_panel=_OBJECTS,
        ),
    ] = 25.0,
    mpp: Annotated[
        float | None,
        typer.Option("--mpp", help="Microns per pixel (for --min-area).", rich_help_panel=_OBJECTS),
    ] = None,
    split: Annotated[
        bool,
        typer.Option(
            "--split/--no-split",
            help="Split touching glomeruli (watershed), in predictions and ground truth alike.",
            rich_help_panel=_OBJECTS,
        ),
    ] = True,
) -> None:
    """Per-image metrics, their mean ± std, and pooled over all pixels.

    Empty prediction vs empty ground truth counts as Dice 1 (see stainadapt.metrics).
    With --instances, both masks become glomerulus instances (as predict --instances
    makes them) and the object-level detection figures are added.
    """
    from ..inference import describe_manifest, read_predict_manifest
    from ..metrics import METRICS, evaluate_folders

    options = None
    if instances:
        from ..objects import InstanceOptions

        options = run_guarded(
            lambda: InstanceOptions(min_area=min_area, mpp=mpp, split=split, simplify=0.0)
        )
    report = run_guarded(
        lambda: evaluate_folders(pred, truth, threshold=threshold, instances=options, iou=iou)
    )
    for kind, paths in (
        ("prediction(s) without ground truth", report.unmatched_predictions),
        ("ground-truth mask(s) without prediction", report.unmatched_truths),
    ):
        if paths:
            shown = ", ".join(p.name for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
            console.print(f"[yellow]warning:[/] {len(paths)} {kind}: {shown}", highlight=False)
    manifest = read_predict_manifest(pred)  # how predict made the masks, when it says
    if as_json:
        data = report.as_dict()
        if manifest is not None:
            data["predict"] = manifest
        print(json.dumps(data, indent=2))
        return
    if manifest is not None:
        stdout.print(describe_manifest(manifest), highlight=False)
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
    if options is not None:
        stdout.print(_objects_table(report, iou))


def _objects_table(report: Any, iou: float) -> Any:
    """Object counts and detection figures per image, mean ± std and pooled."""
    from rich.table import Table

    from ..metrics import OBJECT_METRICS

    table = Table(title=f"glomeruli (matched at IoU > {iou:g})")
    for col in ("image", "pred", "true", "TP", "FP", "FN", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col == "image" else "right")
    counts = ("n_pred", "n_truth", "obj_tp", "obj_fp", "obj_fn")
    for row in report.images:
        table.add_row(
            row["name"],
            *(str(row[c]) for c in counts),
            *(f"{row[m]:.4f}" for m in OBJECT_METRICS),
        )
    table.add_section()
    table.add_row(
        "mean ± std",
        *([""] * len(counts)),
        *(f"{report.mean[m]:.3f} ± {report.std[m]:.3f}" for m in OBJECT_METRICS),
        style="bold",
    )
    table.add_row(
        "pooled",
        *(str(sum(r[c] for r in report.images)) for c in counts),
        *(f"{report.pooled[m]:.4f}" for m in OBJECT_METRICS),
        style="bold",
    )
    return table
