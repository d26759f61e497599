"""`wsop drain`: move every client off one sidecar, live, before it stops (docs/stack.md)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from wsop.checks import check_seconds, check_url
from wsop.cli.options import JsonOpt
from wsop.cli.output import emit, err_console
from wsop.errors import UsageError


def _local_target(name: str) -> tuple[str, str | None, str | None]:
    from wsop.local import stack_file

    record = stack_file.require()
    for sidecar in record.sidecars:
        if sidecar.name == name:
            return sidecar.http, record.admin_token, record.ca_file
    names = ", ".join(s.name for s in record.sidecars)
    raise UsageError(f"--local: the local stack has no sidecar {name!r} (it has {names})")


def drain_cmd(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The sidecar's admin base URL, e.g. http://127.0.0.1:8081 (in a preStop hook).",
            show_default=False,
        ),
    ] = None,
    local: Annotated[
        str | None,
        typer.Option(
            "--local", help="A sidecar of the local stack, by name (s0, s1, …).", show_default=False
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Only onto these sidecars (a,b): their ring decides each client's target. "
            "Default: every other member.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait until it holds no connection.")
    ] = 20.0,
    as_json: JsonOpt = False,
) -> None:
    """Ask a sidecar to move all its clients to other sidecars (through their LB, without
    closing them), then wait until it holds none. Exit 1 if some are still there."""
    from wsop.drain import drain

    if (url is None) == (local is None):
        raise UsageError("give exactly one of --url URL or --local NAME")
    check_seconds(wait, "--wait")  # (nan and inf too: the wait loop never ended)
    if local is not None:
        base, token, ca = _local_target(local)
    else:
        assert url is not None
        check_url(url, "--url", ("http", "https"))
        base, token, ca = url, os.environ.get("WSOP_ADMIN_TOKEN") or None, None
    targets = [n for n in to.split(",") if n] if to is not None else None

    progress = Progress(
        TextColumn("draining"), BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} moved"),
        TimeElapsedColumn(), console=err_console, transient=True,
        disable=as_json or not err_console.is_terminal,
    )  # fmt: skip
    with progress:
        task = progress.add_task("drain", total=None)

        def tick(remaining: int, asked: int) -> None:
            progress.update(task, total=max(asked, 1), completed=max(asked - remaining, 0))

        result = drain(base, token, targets, wait, tick, ca)
    payload: dict[str, Any] = {
        "sidecar": result.sidecar,
        "moving": result.moving,
        "to": result.to,
        "unmovable": result.unmovable,
        "remaining": result.remaining,
        "waited_s": result.waited_s,
    }

    def render(console: Console) -> None:
        spread = ", ".join(f"{n} {c}" for n, c in sorted(result.to.items())) or "nowhere"
        console.print(
            f"{result.sidecar}: asked {result.moving} connection(s) to move ({spread}); "
            f"{result.remaining} still there after {result.waited_s} s",
            highlight=False,
        )

    emit(payload, as_json, render)
    if result.remaining:
        why = f" ({result.unmovable} not behind an LB: cannot be moved)" if result.unmovable else ""
        err_console.print(
            f"[bold red]error:[/] {result.remaining} connection(s) still on {result.sidecar} "
            f"after {wait:g} s{why}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
