"""``stainadapt predict``: segment images, folders and whole slides with a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import AmpOpt, DeviceOpt, console, print_lines, progress_bar, run_guarded

app = typer.Typer()

_OBJECTS = "Objects (--instances)"
_ADAPT = "Test-time adaptation (--adapt)"


@app.command("predict")
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Run folder (model.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the masks.")],
    tile: Annotated[
        int | None, typer.Option(help="Window side in pixels (default: the training size).")
    ] = None,
    overlap: Annotated[
        int | None, typer.Option(help="Window overlap in pixels (default: a quarter tile).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward.")] = 8,
    threshold: Annotated[
        float | None, typer.Option(help="Probability threshold (default: from model.json).")
    ] = None,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write uint8 probability maps.")
    ] = False,
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Also write PNGs with the mask outline.")
    ] = False,
    normalize: Annotated[
        str | None,
        typer.Option("--normalize", help="Stain-normalise each window first (e.g. macenko)."),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Reference image for --normalize.")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Flip test-time augmentation.")] = False,
    device: DeviceOpt = "auto",
    amp: AmpOpt = "auto",
    min_tissue: Annotated[
        float,
        typer.Option(
            "--min-tissue",
            help="Skip windows with less tissue than this fraction (0: never); on slides, "
            "tissue is the mask found on the slide's thumbnail.",
        ),
    ] = 0.01,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip them).")
    ] = False,
    instances: Annotated[
        bool,
        typer.Option(
            "--instances",
            help="Also write NAME.geojson (QuPath), NAME.csv and summary.csv: one object per "
            "glomerulus (implies --probabilities, for the mean probability).",
            rich_help_panel=_OBJECTS,
        ),
    ] = False,
    mpp: Annotated[
        float | None,
        typer.Option(
            "--mpp",
            help="Microns per pixel of inputs that record none: slides are then read at "
            "the model's resolution, and objects measured in um/um2 (default: pixels).",
        ),
    ] = None,
    min_area: Annotated[
        float,
        typer.Option(
            "--min-area",
            help="Drop specks smaller than this (um2 with --mpp, else pixels).",
            rich_help_panel=_OBJECTS,
        ),
    ] = 25.0,
    fill_holes: Annotated[
        bool,
        typer.Option(
            "--fill-holes/--keep-holes",
            help="Fill holes inside glomeruli.",
            rich_help_panel=_OBJECTS,
        ),
    ] = True,
    split: Annotated[
        bool,
        typer.Option(
            "--split/--no-split",
            help="Split touching glomeruli (distance-transform watershed).",
            rich_help_panel=_OBJECTS,
        ),
    ] = True,
    split_depth: Annotated[
        float,
        typer.Option(
            "--split-depth",
            help="Split where the distance map dips by this fraction of its peak between "
            "two centres (0..1; higher splits less).",
            rich_help_panel=_OBJECTS,
        ),
    ] = 0.15,
    simplify: Annotated[
        float,
        typer.Option(
            "--simplify",
            help="Outline simplification tolerance in pixels (0: exact pixel outline).",
            rich_help_panel=_OBJECTS,
        ),
    ] = 1.0,
    adapt: Annotated[
        str,
        typer.Option(
            "--adapt",
            help="Adapt the model to the inputs first: none, bn (re-estimate BatchNorm "
            "statistics, AdaBN), tent (bn, then entropy minimisation of BatchNorm's "
            "affine terms) or target (the target-stain statistics the model kept in "
            "training with --target-statistics).",
            rich_help_panel=_ADAPT,
        ),
    ] = "none",
    adapt_scope: Annotated[
        str,
        typer.Option(
            "--adapt-scope",
            help="call: one set of statistics for every input; file: each input its own.",
            rich_help_panel=_ADAPT,
        ),
    ] = "call",
    adapt_windows: Annotated[
        int,
        typer.Option(
            "--adapt-windows",
            help="Most tissue windows in the adaptation sample.",
            rich_help_panel=_ADAPT,
        ),
    ] = 64,
    adapt_steps: Annotated[
        int,
        typer.Option("--adapt-steps", help="Optimiser steps of tent.", rich_help_panel=_ADAPT),
    ] = 10,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Seed of the adaptation sample.", rich_help_panel=_ADAPT),
    ] = 0,
    adapted_stats: Annotated[
        Path | None,
        typer.Option(
            "--adapted-stats",
            help="Use statistics saved by an earlier --adapt call (for every input) "
            "instead of estimating them.",
            rich_help_panel=_ADAPT,
        ),
    ] = None,
) -> None:
    """Predict masks: PNG for PNG/JPEG, pyramidal tiled TIFF for TIFF and slides.

    Slides (SVS, NDPI, MRXS, SCN, BIF, large TIFFs) are streamed at the model's
    resolution with glass skipped, and get a thumbnail in OUT/thumbnails (docs/slides.md).

    With --instances, also one object per glomerulus: GeoJSON polygons QuPath imports,
    a CSV of measurements per image and summary.csv (see docs/objects.md). With --adapt,
    the model first re-fits its BatchNorm to the inputs (see docs/test-time-adaptation.md).
    """
    from .. import distributed
    from ..inference import PredictOptions, predict_paths

    options = None
    if instances:
        from ..objects import InstanceOptions

        options = run_guarded(
            lambda: InstanceOptions(
                min_area=min_area,
                mpp=mpp,
                fill_holes=fill_holes,
                split=split,
                split_depth=split_depth,
                simplify=simplify,
            )
        )

    main = distributed.is_main()  # under torchrun, rank 0 alone shows progress and reports
    with progress_bar(show=main) as bar:
        task = bar.add_task("predict", total=None)

        def progress(path: Path, done: int, total: int) -> None:
            bar.update(task, description=path.name, completed=done, total=total)

        def adapt_progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        predict_options = PredictOptions(
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            threshold=threshold,
            probabilities=probabilities or instances,
            overlay=overlay,
            normalize=normalize,
            reference=reference,
            tta=tta,
            device=device,
            amp=amp,
            overwrite=overwrite,
            min_tissue=min_tissue,
            mpp=mpp,
            progress=progress,
            adapt=adapt,
            adapt_scope=adapt_scope,
            adapt_windows=adapt_windows,
            adapt_steps=adapt_steps,
            seed=seed,
            adapted_stats=adapted_stats,
            adapt_progress=adapt_progress,
        )
        report = run_guarded(lambda: predict_paths(inputs, model, out, predict_options))
    if not main:  # every rank holds the whole job's report: exit with rank 0's status
        if report.failed:
            raise typer.Exit(1)
        return
    console.print(f"wrote {len(report.written)} mask(s) to {out}", highlight=False)
    if report.existing:
        console.print(
            f"kept {len(report.existing)} existing output(s) (--overwrite to redo them)",
            highlight=False,
        )
    lines = []
    if report.tiles_total:
        pct = 100.0 * report.tiles_skipped / report.tiles_total
        lines.append(f"skipped {report.tiles_skipped} of {report.tiles_total} windows as "
                     f"background glass ({pct:.1f}%)")
    for path, slide in report.slides:
        lines.append(_slide_line(path, slide))
    print_lines(lines, report.notes)
    objects = _write_objects(inputs, out, options, overwrite) if options is not None else None
    run_guarded(report.raise_for_failures)
    if objects is not None:
        run_guarded(objects.raise_for_failures)


def _slide_line(path: Path, slide: Any) -> str:
    """One line per slide: its resolution, the level and scale read, its tissue."""
    mpp = f"{slide.mpp:g} um/px ({slide.mpp_source})" if slide.mpp else "no mpp"
    read = f"level {slide.level}"
    if abs(slide.downsample - slide.level_downsample) > 1e-3 * slide.downsample:
        read += f" resampled to downsample {slide.downsample:.3g}"
    tissue = ""
    if slide.tissue_fraction is not None:
        tissue = f", tissue {100 * slide.tissue_fraction:.1f}%"
        if slide.tissue_mm2 is not None:
            tissue += f" ({slide.tissue_mm2:.2f} mm2)"
    return f"{path.name}: {mpp}, read at {read}{tissue}"


def _write_objects(inputs: list[Path], out: Path, options: Any, overwrite: bool) -> Any:
    """The --instances step: GeoJSON and CSV from the masks just written."""
    from ..objects.outputs import write_prediction_objects

    objects = run_guarded(
        lambda: write_prediction_objects(inputs, out, options, overwrite=overwrite)
    )
    console.print(
        f"wrote objects of {len(objects.written)} image(s) ({objects.objects} glomeruli) "
        f"as GeoJSON + CSV; summary: {objects.summary}",
        highlight=False,
    )
    if objects.existing:
        console.print(
            f"kept objects of {len(objects.existing)} image(s) (--overwrite to redo them)",
            highlight=False,
        )
    for note in objects.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    return objects
