"""``stainadapt tiles``: training tiles (and masks) cut from slides and QuPath annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, print_lines, progress_bar, run_guarded

app = typer.Typer()

_WHICH = "Which tiles"


@app.command("tiles")
def tiles(
    slides: Annotated[
        list[Path],
        typer.Argument(help="Slides (SVS, NDPI, MRXS, TIFF, ...) or folders of them."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Domain folder to write (images/, masks/).")
    ],
    annotations: Annotated[
        list[Path] | None,
        typer.Option(
            "--annotations",
            "-a",
            help="GeoJSON exported from QuPath, one per slide (or folders of them), paired "
            "by name (case1.svs with case1.geojson or case1.svs.geojson) or in the order "
            "given. Without it: image-only tiles for a target domain.",
        ),
    ] = None,
    mpp: Annotated[
        float, typer.Option("--mpp", help="Resolution of the tiles in microns per pixel.")
    ] = 0.5,
    size: Annotated[int, typer.Option("--size", help="Tile side in pixels.")] = 512,
    glomerulus_class: Annotated[
        str | None,
        typer.Option(
            "--class",
            help="Only polygons of this class are glomeruli (shell pattern, any case, e.g. "
            "'Glomerulus*'); default: every polygon that is not a region of interest.",
            rich_help_panel=_WHICH,
        ),
    ] = None,
    roi_class: Annotated[
        str,
        typer.Option(
            "--roi-class",
            help="Class of the regions of interest: regions whose glomeruli are all "
            "annotated, where random tiles may go ('' for none).",
            rich_help_panel=_WHICH,
        ),
    ] = "Region*",
    negatives: Annotated[
        float,
        typer.Option(
            "--negatives",
            help="Random tissue tiles per glomerulus tile, from the regions of interest "
            "(or the whole slide with --fully-annotated). Their masks are exact: one that "
            "overlaps a glomerulus shows it.",
            rich_help_panel=_WHICH,
        ),
    ] = 0.5,
    fully_annotated: Annotated[
        bool,
        typer.Option(
            "--fully-annotated",
            help="Every glomerulus of the slides is annotated: random tiles may come from "
            "anywhere on the slide.",
            rich_help_panel=_WHICH,
        ),
    ] = False,
    tiles_per_slide: Annotated[
        int,
        typer.Option(
            "--tiles-per-slide",
            help="Random tissue tiles of each unlabelled slide (without --annotations).",
            rich_help_panel=_WHICH,
        ),
    ] = 50,
    min_tissue: Annotated[
        float,
        typer.Option(
            "--min-tissue",
            help="Smallest tissue fraction of a random tile (0..1).",
            rich_help_panel=_WHICH,
        ),
    ] = 0.5,
    slide_mpp: Annotated[
        float | None,
        typer.Option(
            "--slide-mpp",
            help="Resolution (um/px at level 0) of slides that record none.",
            show_default=False,
        ),
    ] = None,
    bounds_origin: Annotated[
        bool,
        typer.Option(
            "--bounds-origin/--no-bounds-origin",
            help="GeoJSON coordinates start at the scanned area's corner where OpenSlide "
            "reports one (MRXS and a few other formats), as QuPath opens such slides; "
            "--no-bounds-origin for tools that use the full slide's corner.",
        ),
    ] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random tiles.")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo tiles that exist in --out already.")
    ] = False,
) -> None:
    """Cut training tiles (PNG) and masks (0/255) from slides and QuPath GeoJSON.

    Tiles are centred on every annotated glomerulus, plus random tissue tiles from the
    fully annotated regions, all resampled to --mpp. --out is a domain folder for
    `stainadapt train`; tiles.json beside images/ records the resolution and where every
    tile came from. See docs/guide.md, "From QuPath annotations to a training domain".
    """
    from ..data.tiles import TileOptions, collect_slides, cut_tiles

    options = run_guarded(
        lambda: TileOptions(
            mpp=mpp,
            size=size,
            glomerulus_class=glomerulus_class,
            roi_class=roi_class or None,
            negatives=negatives,
            fully_annotated=fully_annotated,
            tiles_per_slide=tiles_per_slide,
            min_tissue=min_tissue,
            slide_mpp=slide_mpp,
            bounds_origin=bounds_origin,
            seed=seed,
            overwrite=overwrite,
        )
    )
    slide_paths, annotation_paths = run_guarded(lambda: collect_slides(slides, annotations))
    with progress_bar() as bar:
        task = bar.add_task("tiles", total=None)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, description=name, completed=done, total=total)

        report = run_guarded(
            lambda: cut_tiles(slide_paths, out, options, annotation_paths, progress)
        )
    kinds: dict[str, int] = {}
    for counts in report.slides.values():
        for kind, n in counts.items():
            kinds[kind] = kinds.get(kind, 0) + n
    parts = ", ".join(f"{kinds[k]} {k}" for k in ("glomerulus", "random", "unlabelled")
                      if kinds.get(k))
    console.print(
        f"wrote {len(report.written)} tile(s){f' ({parts})' if parts else ''} from "
        f"{len(report.slides)} slide(s) to {out}",
        highlight=False,
    )
    if report.existing:
        console.print(
            f"kept {len(report.existing)} existing tile(s) (--overwrite to redo them)",
            highlight=False,
        )
    print_lines([], report.notes)
    run_guarded(report.raise_for_failures)
