"""`--help` in the words every Unix tool uses: `--port INTEGER`, `--local`, `MEMBERS`.

Typer 0.29 labels values by their Python annotation (`<int>`, `<str>`, `<list[str]>`),
shows a type even for on/off flags (`--json <bool>`) and writes required arguments as
`{members}` in the usage line. wsop's help uses click's long-standing conventions
instead: TEXT, INTEGER, FLOAT, PATH, no type on a flag, arguments in capitals. An
explicit `metavar=` on an option still wins (e.g. `--report DIR`).

Typer offers no hook for this (its options take no `cls=`), so `install()` replaces
the four display attributes on Typer's parameter classes, once, in the `wsop` process
only. Every attribute is looked up defensively: if a Typer release renames them, help
falls back to Typer's own labels instead of failing.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, get_args, get_origin

from typer.core import TyperArgument, TyperOption

_NAMES: dict[Any, str] = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}


def standard_type(param: Any) -> str | None:
    """The click-style name of a parameter's value type (None for a bool flag)."""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return None
    if getattr(desc, "is_choice", False) and getattr(desc, "choices", None):
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices)
    annotation = desc.annotation
    if get_origin(annotation) in (list, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        annotation = args[0] if args else str
    if annotation is bool:
        return None
    if getattr(desc, "is_path", False):
        return "PATH"
    if annotation in _NAMES:
        return _NAMES[annotation]
    return getattr(annotation, "__name__", str(annotation)).upper()


def _option_type(self: Any, ctx: Any) -> str | None:
    if self.metavar is not None:
        return self.metavar
    if getattr(self, "is_flag", False):
        return None
    return standard_type(self)


def _argument_name(self: Any) -> str:
    return self.metavar or (self.name or "").upper()


def _argument_type(self: Any, ctx: Any) -> str | None:
    return standard_type(self)


def _argument_label(self: Any) -> str:
    return _argument_name(self) + ("..." if self.nargs != 1 else "")


def _argument_usage(self: Any) -> str:
    label = _argument_label(self)
    return label if self.required else f"[{label}]"


_PATCHES = (
    (TyperOption, "display_type_rich", _option_type),
    (TyperArgument, "display_type_rich", _argument_type),
    (TyperArgument, "display_name_raw", property(_argument_name)),
    (TyperArgument, "_usage_display_name", _argument_usage),
)


def reflow(text: str | None) -> str | None:
    """A docstring's paragraphs as single lines, so the terminal wraps them where it
    must: rich keeps a docstring's own line breaks, which cut sentences mid-line in any
    terminal wider or narrower than the source. A paragraph opening with `\\b` keeps
    its lines (click's marker for preformatted text)."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def reflow_all(command: Any) -> None:
    """`reflow` the help of a command and of every subcommand under it."""
    command.help = reflow(command.help)
    for sub in getattr(command, "commands", {}).values():
        reflow_all(sub)


def install() -> None:
    """Switch Typer's help labels to the standard ones (idempotent)."""
    for cls, name, replacement in _PATCHES:
        if hasattr(cls, name) and getattr(cls, name) is not replacement:
            setattr(cls, name, replacement)
