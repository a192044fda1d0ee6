"""``stainadapt plugins``: what is installed, from where, and whether it loads."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .. import registry
from .common import stdout

app = typer.Typer()


@app.command("plugins")
def plugins(
    group: Annotated[
        str | None, typer.Option(help="Only this group: backbones, discriminators, normalizers.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List installed plugins (built-in and third-party) with package, version and status."""
    from .common import run_guarded

    infos = run_guarded(lambda: registry.list_plugins(group, load=True))
    if as_json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    table = Table(title="stainadapt plugins")
    for col in ("group", "name", "package", "version", "status"):
        table.add_column(col)
    for i in infos:
        style = {"ok": "green", "error": "red", "duplicate": "red", "disabled": "yellow"}.get(
            i.status, ""
        )
        status = f"[{style}]{i.status}[/]" if style else i.status
        if i.error:
            status += f": {i.error}"
        table.add_row(i.group, i.name, i.package, i.version, status)
    stdout.print(table)
