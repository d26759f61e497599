"""`wsop resolve`: who would receive a message to these teams of this tenant."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from wsop.acl.resolve import resolve
from wsop.cli.options import JsonOpt, RedisOpt, tenant_store
from wsop.cli.output import emit

PREVIEW = 50


def resolve_cmd(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant id.")],
    team: Annotated[
        list[str] | None, typer.Option("--team", help="Team name; repeat for several.")
    ] = None,
    all_members: Annotated[
        bool, typer.Option("--all", help="Every member of the teams, online or not.")
    ] = False,
    count_only: Annotated[
        bool, typer.Option("--count", help="Only the count (JSON omits `recipients`).")
    ] = False,
    redis_url: RedisOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recipients = OR of the teams AND online (without AND with --all), sorted."""
    result = resolve(tenant_store(redis_url), tenant, team or [], online_only=not all_members)

    def render(console: Console) -> None:
        scope = "members" if all_members else "online recipients"
        console.print(
            f"[bold]{result.count:,}[/] {scope} for tenant [cyan]{result.tenant}[/] "
            f"teams {', '.join(result.teams)} in {result.elapsed_ms:.2f} ms"
        )
        if result.missing_teams:
            missing = ", ".join(result.missing_teams)
            console.print(f"[yellow]missing teams (contribute nothing):[/] {missing}")
        if not count_only and result.recipients:
            shown = ", ".join(str(r) for r in result.recipients[:PREVIEW])
            more = result.count - PREVIEW
            console.print(shown + (f", … (+{more:,} more; use --json for all)" if more > 0 else ""))

    emit(result.to_json(include_recipients=not count_only), as_json, render)
