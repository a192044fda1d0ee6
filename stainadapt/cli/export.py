"""``stainadapt export``: the run's network (and normaliser) as ONNX or TorchScript, checked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, print_lines, run_guarded

app = typer.Typer()


@app.command("export")
def export(
    run: Annotated[Path, typer.Argument(help="Run folder (model.safetensors + model.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (e.g. g.onnx).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")] = "onnx",
    normalizer: Annotated[
        bool,
        typer.Option(
            "--normalizer/--no-normalizer",
            help="Bake the run's stain normaliser into the model (default), or export G "
            "alone for images normalised elsewhere.",
        ),
    ] = True,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Compare the exported model with PyTorch on synthetic stained tiles and a "
            "near-blank one (ONNX: needs onnxruntime: pip install 'stainadapt\\[onnx]').",
        ),
    ] = True,
    atol: Annotated[
        float | None,
        typer.Option(
            "--atol",
            help="Largest allowed probability difference [default: 1e-4; 5e-3 with a "
            "baked-in normaliser].",
            show_default=False,
        ),
    ] = None,
    image_atol: Annotated[
        float,
        typer.Option(
            "--image-atol",
            help="Largest allowed mean difference of a normalised image (0..255 units).",
        ),
    ] = 0.01,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = 17,
    statistics: Annotated[
        str,
        typer.Option(
            "--statistics",
            help="BatchNorm statistics frozen into the export: trained, target (kept by a "
            "--target-statistics run) or a statistics file written by predict --adapt.",
        ),
    ] = "trained",
) -> None:
    """Export the segmentation network, with the run's normaliser baked in, checked against PyTorch.

    Input: float32 (B, 3, H, W), RGB in 0..255, H and W multiples of 32.
    Output: float32 (B, 1, H, W) probabilities (normalise -> x / 255 -> G -> sigmoid);
    with a normaliser also the normalised image (ONNX output 'normalized',
    TorchScript method normalize). OUT.json holds this contract, the threshold and the
    fitted normaliser (docs/objects.md).
    """
    from ..export import export_model

    report = run_guarded(
        lambda: export_model(
            run,
            out,
            fmt,
            check=check,
            atol=atol,
            image_atol=image_atol,
            opset=opset,
            normalizer=normalizer,
            statistics=statistics,
        )
    )
    console.print(f"wrote {report.path} ({report.format}) and {report.sidecar}", highlight=False)
    if report.baked_in:
        console.print(f"normaliser baked in: {report.normalizer}", highlight=False)
    if report.max_abs_diff is not None:
        console.print(
            f"checked with {report.checked_with} at {', '.join(map(str, report.sizes))} px: "
            f"max |difference| from PyTorch {report.max_abs_diff:.2e} "
            f"(mean {report.mean_abs_diff:.2e}) in probabilities",
            highlight=False,
        )
    lines = []
    if report.image_max_abs_diff is not None:
        lines.append(f"normalised images: max |difference| {report.image_max_abs_diff:.0f}, "
                     f"mean {report.image_mean_abs_diff:.2e} (worst image; 0..255 units)")
    print_lines(lines, report.notes)
