"""``stainadapt info``: parameters, GFLOPs and feature-map shapes of G and discriminators."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .common import run_guarded, stdout

app = typer.Typer()


@app.command("info")
def info(
    backbone: Annotated[str, typer.Option(
        help="Encoder of G: a backbones plugin, a timm name (tag allowed) or "
        "hf-hub:org/name.")] = "resnet34",
    disc: Annotated[
        list[str] | None,
        typer.Option("--disc", help="Discriminator spec, e.g. mirrored or single:layer=f9."),
    ] = None,
    image_size: Annotated[
        int, typer.Option(help="Side of the square input (a multiple of 32).")
    ] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the size and forward cost (per image) of G and of each discriminator."""

    def compute():
        from ..models.summary import model_summary

        return model_summary(backbone, tuple(disc or ()), image_size)

    summary = run_guarded(compute)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    size = summary["image_size"]
    models = Table(title=f"stainadapt models at {size}x{size} (per image)")
    for col in ("network", "params (M)", "forward GFLOPs", "reads", "alpha"):
        models.add_column(col, justify="right" if "(" in col or "GF" in col else "left")
    g = summary["generator"]
    models.add_row(
        f"G ({g['backbone']})", f"{g['params'] / 1e6:.2f}", f"{g['gflops']:.2f}", "image", ""
    )
    for spec, d in summary["discriminators"].items():
        alphas = ", ".join(f"{k}={v:g}" for k, v in d["weights"].items())
        models.add_row(
            spec, f"{d['params'] / 1e6:.2f}", f"{d['gflops']:.2f}", " ".join(d["consumes"]), alphas
        )
    stdout.print(models)
    feats = Table(title="feature maps of G")
    for col in ("name", "channels", "height", "width", "stride"):
        feats.add_column(col, justify="left" if col == "name" else "right")
    for name, (c, h, w) in summary["features"].items():
        feats.add_row(name, str(c), str(h), str(w), str(size // h))
    stdout.print(feats)
    for line in encoder_lines(summary["encoder"]):
        stdout.print(line, highlight=False, soft_wrap=True)


def encoder_lines(enc: dict) -> list[str]:
    """The encoder's levels, stem, input normalisation and cached weights, as text."""
    levels = enc.get("levels")
    stem = " + a learned stride-2 stem in G (f0)" if enc["stem"] else ""
    lines = [f"encoder: timm {enc.get('timm_name') or '(plugin)'}, levels {levels} at "
             f"strides {enc['strides'][1 if enc['stem'] else 0:]}{stem}"]
    w = enc["weights"]
    if w.get("mean"):
        lines.append(f"input normalisation with --pretrained: mean {w['mean']}, std "
                     f"{w['std']} (random init: none, inputs in 0..1 as they are)")
    if w.get("cached") is None:
        lines.append("pretrained weights: none published (give --pretrained FILE)")
    else:
        where = w.get("hf_hub_id") or "timm"
        state = f"cached at {w['file']}" if w["cached"] else (
            "not cached (downloaded on first --pretrained imagenet; offline: "
            "--pretrained FILE)")
        lines.append(f"pretrained weights ({w.get('tag')}, {where}): {state}")
    return lines
