"""``stainadapt export``: the segmentation network as ONNX or TorchScript, checked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, run_guarded

app = typer.Typer()


@app.command("export")
def export(
    run: Annotated[Path, typer.Argument(help="Run folder (model.safetensors + model.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (e.g. g.onnx).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")] = "onnx",
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Compare the exported model with PyTorch on a random batch (ONNX: "
            "needs onnxruntime: pip install 'stainadapt\\[onnx]').",
        ),
    ] = True,
    atol: Annotated[
        float, typer.Option("--atol", help="Largest allowed probability difference.")
    ] = 1e-4,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = 17,
) -> None:
    """Export the segmentation network alone (ONNX or TorchScript), checked against PyTorch.

    Input: float32 (B, 3, H, W), RGB in 0..255, H and W multiples of 32.
    Output: float32 (B, 1, H, W) probabilities (x / 255 -> G -> sigmoid).
    A stain normaliser of the run is not baked in: normalise images first.
    OUT.json holds this contract, the threshold and the fitted normaliser (docs/objects.md).
    """
    from ..export import export_model

    report = run_guarded(lambda: export_model(run, out, fmt, check=check, atol=atol, opset=opset))
    console.print(f"wrote {report.path} ({report.format}) and {report.sidecar}", highlight=False)
    if report.max_abs_diff is not None:
        console.print(
            f"checked with {report.checked_with} at {', '.join(map(str, report.sizes))} px: "
            f"max |difference| from PyTorch {report.max_abs_diff:.2e}",
            highlight=False,
        )
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
