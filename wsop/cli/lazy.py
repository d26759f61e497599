"""Commands that are imported when they run, not when `wsop` starts.

Every command group pulls in its own world (numpy for the ring and the bitmaps, redis,
asyncio and websockets for the stack, locust's runner, the Kubernetes client). Loaded
eagerly, `wsop --version` paid for all of them (~1 s on a busy machine). The root
group therefore knows each command only by name, help panel and one-line summary
(`LazyCommand`); the module behind a name is imported when that command is resolved
to run or to print its own help. `wsop --help` lists the summaries without importing
any command module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import typer
import typer.main
from typer.core import TyperCommand

from wsop.cli import helpfmt
from wsop.cli.app import RootGroup

# Help panels, in the order of the work: who may read what, where users land, the
# stack itself, the same on Kubernetes, then proving it under load.
ACL = "Tenant access (ACL bitmaps)"
PLACEMENT = "Placement"
STACK = "Local stack and servers"
KUBERNETES = "Kubernetes and live moves"
LOAD = "Load tests"


@dataclass(frozen=True)
class LazyCommand:
    """A command the root can list without importing it.

    `target` is `module:attribute`: a `typer.Typer` (a command group such as `seed`)
    or a command function. `summary` is the one line `wsop --help` shows; it must agree
    with the command's docstring (tests/cli/test_cli_startup.py checks both exist)."""

    name: str
    target: str
    summary: str
    panel: str

    def load(self) -> Any:
        """The click command behind the name, built by Typer from the real module."""
        module_name, attribute = self.target.split(":")
        obj = getattr(importlib.import_module(module_name), attribute)
        if isinstance(obj, typer.Typer):
            command = typer.main.get_group(obj)
        else:
            single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            single.command(self.name, short_help=self.summary)(obj)
            command = typer.main.get_command(single)
        helpfmt.reflow_all(command)
        command.name = self.name
        command.short_help = self.summary
        command.rich_help_panel = self.panel  # type: ignore[attr-defined]
        return command

    def stub(self) -> TyperCommand:
        """What `wsop --help` lists: the name, summary and panel, nothing imported."""
        return TyperCommand(
            name=self.name, help=self.summary, short_help=self.summary, rich_help_panel=self.panel
        )


class LazyGroup(RootGroup):
    """The root `wsop` group: commands from `commands`, imported on first use."""

    commands_spec: tuple[LazyCommand, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._specs = {spec.name: spec for spec in self.commands_spec}
        self._loaded: dict[str, Any] = {}
        self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return [spec.name for spec in self.commands_spec]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        spec = self._specs.get(cmd_name)
        if spec is None:
            return None
        if self._listing:
            return spec.stub()
        if cmd_name not in self._loaded:
            self._loaded[cmd_name] = spec.load()
        return self._loaded[cmd_name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The root's help lists the summaries only: no command module is imported."""
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False
