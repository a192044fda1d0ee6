"""``stainadapt normalize``: stain-normalise images (files or folders) to a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DeviceOpt, console, progress_bar, run_guarded

app = typer.Typer()


@app.command("normalize")
def normalize(
    inputs: Annotated[list[Path], typer.Argument(help="Images or folders (searched recursively).")],
    reference: Annotated[
        Path, typer.Option("--reference", "-r", help="Reference image whose stains to match.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help="Normaliser spec: macenko, reinhard or vahadane, with options "
            "(e.g. macenko:alpha=1,beta=0.15).",
        ),
    ] = "macenko",
    device: DeviceOpt = "auto",
) -> None:
    """Normalise stains to a reference (TIFF in, TIFF out; PNG in, PNG out; JPEG -> PNG)."""
    from ..normalizers.apply import normalize_paths

    with progress_bar() as bar:
        task = bar.add_task("normalize", total=None)
        report = run_guarded(
            lambda: normalize_paths(
                inputs,
                out,
                spec=method,
                reference=reference,
                device=device,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        )
    console.print(f"wrote {len(report.written)} image(s) to {out}")
    if report.passed_through:
        console.print(
            f"[yellow]{len(report.passed_through)} image(s) had too little tissue and were "
            "copied unchanged[/]: "
            + ", ".join(str(p) for p in report.passed_through[:5])
            + (" ..." if len(report.passed_through) > 5 else ""),
            highlight=False,
        )
