"""Write docs/cli.md, the CLI reference, from the Typer app itself.

    python docs/make_cli_reference.py            # regenerate docs/cli.md
    python docs/make_cli_reference.py --check    # exit 1 if docs/cli.md is stale

The reference is rendered from the click command objects (``typer.main.get_command``),
not from the rich ``--help`` screens, so it does not depend on the terminal width, on
colours or markup, or on which plugins are installed: every command, its help, and every
argument and option with its type, default and help. ``tests/docs/test_cli_reference.py``
fails when the file differs from a fresh render.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import sys
import types
import typing
from pathlib import Path, PurePath
from typing import Any

OUT = Path(__file__).resolve().parent / "cli.md"
PROG = "stainadapt"

_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}


def _annotation_name(ann: Any) -> str:
    """A click-style type name (TEXT, INTEGER, PATH, ...) for a Python annotation."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return " | ".join(_annotation_name(a) for a in args) if args else "TEXT"
    if origin in (list, tuple, set, typing.Sequence) and typing.get_args(ann):
        return _annotation_name(typing.get_args(ann)[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(ann))
    if origin is typing.Annotated:
        return _annotation_name(typing.get_args(ann)[0])
    if isinstance(ann, type):
        if issubclass(ann, enum.Enum):
            return "|".join(str(m.value) for m in ann)
        if issubclass(ann, PurePath):
            return "PATH"
        for base, name in _NAMES.items():
            if ann is base:
                return name
        return ann.__name__.upper()
    return str(ann).upper()


def _type_name(param: Any) -> str:
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return "flag"
    desc = getattr(param, "type_descriptor", None)  # Typer's own click (>= 0.2x)
    if desc is not None and getattr(desc, "annotation", None) is not None:
        name = _annotation_name(desc.annotation)
    else:  # classic click parameter types
        ptype = getattr(param, "type", None)
        choices = getattr(ptype, "choices", None)
        if choices:
            name = "|".join(str(c) for c in choices)
        else:
            name = str(getattr(ptype, "name", "text")).upper()
    if getattr(param, "nargs", 1) == -1:
        name += " ..."
    if getattr(param, "multiple", False):
        name += ", repeatable"
    return name


def _train_defaults() -> dict[str, Any]:
    """``stainadapt train`` flags default to "not given" (so ``--config`` can set them);
    the value a run gets then is the default recipe's (``stainadapt.recipes``)."""
    from stainadapt.config import TrainConfig
    from stainadapt.recipes import DEFAULT_TRAINING, training_fields

    defaults = {**TrainConfig().as_dict(), **training_fields(DEFAULT_TRAINING)}
    defaults["disc"] = defaults.pop("discs")
    defaults["select"] = "by mode"
    return defaults


def _default(param: Any, fallback: dict[str, Any] | None = None) -> str:
    if getattr(param, "required", False):
        return "required"
    value = getattr(param, "default", None)
    if value is None and fallback and param.name in fallback:
        value = fallback[param.name]
        if value == "by mode":
            return value
    if callable(value) or value is None or value == "" or type(value).__name__ == "Sentinel":
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        if getattr(param, "is_flag", False):
            on, off = list(param.opts), list(getattr(param, "secondary_opts", []) or [])
            if off:
                return f"`{(on if value else off)[0]}`"
            return "on" if value else "off"
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        if not value:
            return ""
        return ", ".join(f"`{v}`" for v in value)
    if isinstance(value, PurePath):
        value = value.as_posix()
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _names(param: Any) -> str:
    if getattr(param, "param_type_name", "") == "argument":
        return (param.metavar or param.name).upper()
    opts = sorted(param.opts, key=lambda o: (o.startswith("--"), o))  # -m before --model
    text = ", ".join(f"`{o}`" for o in opts)
    secondary = getattr(param, "secondary_opts", None) or []
    if secondary:
        text += " / " + ", ".join(f"`{o}`" for o in secondary)
    return text


def _usage(path: list[str], cmd: Any) -> str:
    pieces = [*path]
    if getattr(cmd, "commands", None):
        pieces.append("[OPTIONS] COMMAND [ARGS]...")
        return " ".join(pieces)
    if any(getattr(p, "param_type_name", "") == "option" and not p.hidden for p in cmd.params):
        pieces.append("[OPTIONS]")
    for p in cmd.params:
        if getattr(p, "param_type_name", "") != "argument":
            continue
        label = (p.metavar or p.name).upper() + ("..." if p.nargs == -1 else "")
        pieces.append(label if p.required else f"[{label}]")
    return " ".join(pieces)


def _params_table(cmd: Any, fallback: dict[str, Any] | None = None) -> list[str]:
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    if not params:
        return []
    lines = ["| argument / option | type | default | description |", "|---|---|---|---|"]
    for p in params:
        lines.append(
            f"| {_names(p)} | {_cell(_type_name(p))} | {_cell(_default(p, fallback))} "
            f"| {_cell(getattr(p, 'help', None) or '')} |"
        )
    return lines


def _help(cmd: Any) -> str:
    return inspect.cleandoc(cmd.help or "").replace("\b\n", "")


def _render_command(path: list[str], cmd: Any, level: int) -> list[str]:
    lines = [f"{'#' * level} `{' '.join(path)}`", ""]
    if _help(cmd):
        lines += [_help(cmd), ""]
    lines += [f"    {_usage(path, cmd)}", ""]
    table = _params_table(cmd, _train_defaults() if path[1:] == ["train"] else None)
    if table:
        lines += [*table, ""]
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        if not getattr(sub, "hidden", False):
            lines += _render_command([*path, name], sub, min(level + 1, 4))
    return lines


def render() -> str:
    """The whole reference as Markdown (deterministic)."""
    import typer.main

    from stainadapt.cli.app import app

    root = typer.main.get_command(app)
    commands = {n: c for n, c in (root.commands or {}).items() if not getattr(c, "hidden", False)}
    lines = [
        "# CLI reference",
        "",
        "<!-- Generated by `python docs/make_cli_reference.py` from the Typer app; do not edit",
        "     by hand. tests/docs/test_cli_reference.py fails when this file is stale. -->",
        "",
        _help(root),
        "",
        f"    {PROG} [GLOBAL OPTIONS] COMMAND [ARGS]...",
        "",
        "Global options go *before* the command (`stainadapt --debug train ...`). Every",
        "command also takes `--help`. Exit codes: 0 success, 1 a run failed, 2 bad input",
        "(the one-line error names the file or option), 130 interrupted. For `train`, the",
        "default column shows what a run gets when neither the flag nor `--config` sets it",
        "(the default `--recipe real`; `--recipe paper` changes the recipe's fields).",
        "",
        *_params_table(root),
        "",
        "Commands: " + ", ".join(f"[`{n}`](#{PROG}-{n})" for n in commands) + ".",
        "",
    ]
    for name, cmd in commands.items():
        lines += _render_command([PROG, name], cmd, 2)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    args = parser.parse_args(argv)
    text = render()
    current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
    if args.check:
        if current != text:
            print(f"{args.out} is stale: run `python docs/make_cli_reference.py`")
            return 1
        print(f"{args.out} is current")
        return 0
    if current != text:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(f"{args.out} already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
