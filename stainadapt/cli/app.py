"""The root Typer app: composes one small app per command (``cli/<command>.py``)."""

from __future__ import annotations

import importlib
import logging
from typing import Annotated

import typer

from .. import __version__
from .common import STATE, run_guarded

app = typer.Typer(
    name="stainadapt",
    help="Cross-stain glomerulus segmentation with multi-level adversarial learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _no_type_after_flags() -> None:
    """Show no ``<bool>`` type after flags (``--overlay``, ``--help``) in the rich help.

    Typer's rich help panels print ``TyperOption.display_type_rich`` for every option;
    unlike its plain-text help (``get_help_record``), it does not skip flags, which take
    no value. Patched here, once, for the versions that have the method.
    """
    option = getattr(typer.core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if original is None or getattr(original, "_skips_flags", False):
        return

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._skips_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_no_type_after_flags()

# Each module defines ``app`` holding one command; added in this order to --help.
COMMAND_MODULES = [
    "demo",
    "synth",
    "tiles",
    "train",
    "predict",
    "evaluate",
    "export",
    "normalize",
    "info",
    "plugins",
]


def _version(value: bool) -> None:
    if value:
        print(f"stainadapt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")
    ] = False,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            "--max-pixels",
            help="Refuse images whose header claims more pixels than this, before decoding "
            "them into memory (decompression bombs; default 2**31, 0: no limit; env "
            "STAINADAPT_MAX_PIXELS). Applies to every command: stainadapt --max-pixels N "
            "train ... Slide TIFFs that predict streams tile by tile are not held to it: "
            "their working memory is a few bands of windows.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """stainadapt: train on one stain, segment glomeruli in another."""
    STATE["debug"] = debug
    if max_pixels is not None:
        from ..data.io import set_pixel_limit

        run_guarded(lambda: set_pixel_limit(max_pixels))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)


for _name in COMMAND_MODULES:
    app.add_typer(importlib.import_module(f"{__package__}.{_name}").app)


def main() -> None:
    """Console-script entry point."""
    app()
