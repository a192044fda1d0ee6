"""Shared CLI pieces: the console, option aliases and the error boundary."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from ..errors import ReportedInterrupt, StainadaptError

if TYPE_CHECKING:
    from rich.progress import Progress

console = Console(stderr=True)
stdout = Console()

T = TypeVar("T")

# Set by the root callback from --debug; read by the error boundary.
STATE = {"debug": False}

DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
AmpOpt = Annotated[str, typer.Option(help="Mixed precision: auto (bf16 on CUDA), bf16 or off.")]


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_guarded(fn: Callable[[], T]) -> T:
    """Run engine code; turn the project's errors into one line and an exit code.

    With ``--debug`` the traceback is shown instead.
    """
    try:
        return fn()
    except StainadaptError as exc:
        if STATE["debug"]:
            raise
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:
        if not isinstance(exc, ReportedInterrupt):  # the engine said it already
            console.print("interrupted", style="yellow")
        raise typer.Exit(130) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if STATE["debug"]:
            raise
        fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), 2)
    raise AssertionError("unreachable")  # pragma: no cover


def is_tty() -> bool:
    return sys.stderr.isatty()


def progress_bar(show: bool = True) -> Progress:
    """The progress bar of the file commands (synth, predict, normalize), on stderr.

    One place for its columns, so the commands look alike. Hidden when stderr is not a
    terminal (logs and CI stay clean) or when ``show`` is false (e.g. non-zero ranks).
    Use as a context manager and ``add_task`` on it.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (is_tty() and show),
    )


def print_lines(lines: list[str], notes: Sequence[str] = ()) -> None:
    """Report lines (no rich highlighting), then each note in yellow."""
    for line in lines:
        console.print(line, highlight=False)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
