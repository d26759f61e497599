"""Rendering shared by every command: one `--json` path and one human path per result.

Human output is for a terminal *and* for a pipe. In a pipe (or a file, or CI's log)
rich would wrap at 80 columns — or at the width of whatever terminal stderr happens to
be — and split a command the user is told to copy, or a line a script greps. So when
its stream is not a terminal a console never wraps (`PIPE_WIDTH`); on a terminal it
uses the terminal's width. A table's title is a line of its own (`titled_table`), not
rich's title, which is wrapped to the table's width (`wsop ring locate` with a long
tenant folded it over four lines) and padded with trailing spaces.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console, ConsoleDimensions, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from wsop.cli.options import JSON_OPTION_HELP

__all__ = ["JSON_OPTION_HELP", "console", "emit", "err_console", "titled_table"]

PIPE_WIDTH = 10_000  # "no wrapping": no line wsop prints comes near it


class PipeAwareConsole(Console):
    """A rich Console that wraps on a terminal and never in a pipe or a file."""

    @property
    def size(self) -> ConsoleDimensions:
        # (not even $COLUMNS, which rich would read: CI runners and test workers set it)
        if not self.is_terminal:
            return ConsoleDimensions(PIPE_WIDTH, self._height or 25)
        return super().size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = PipeAwareConsole()
err_console = PipeAwareConsole(stderr=True)


class TitledTable(Table):
    """A table whose title is printed as its own line above it (see the module doc)."""

    def __init__(self, heading: str, **options: Any) -> None:
        super().__init__(**options)
        self.heading = heading

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.heading, style="table.title")
        yield from super().__rich_console__(console, options)


def titled_table(title: str, **options: Any) -> Table:
    """A rich Table with `title` on the line above it, never wrapped to its width."""
    return TitledTable(title, **options)


def emit(payload: dict[str, Any], as_json: bool, render: Callable[[Console], None]) -> None:
    """Print `payload` as JSON, or call `render` for the human form.

    Both paths read the same result, so the table can never disagree with `--json`.
    """
    if as_json:
        sys.stdout.write(json.dumps(payload, sort_keys=False) + "\n")
        sys.stdout.flush()
    else:
        render(console)
