"""`wsop online add|remove`: flip presence bits by hand (the sidecars do it live);
`wsop online list|count`: who is online, read from Redis like the other commands."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from wsop.acl.presence import count_online, list_online, set_online
from wsop.cli.app import new_app
from wsop.cli.options import JsonOpt, MaxUsersOpt, RedisOpt, max_users_or_default, tenant_store
from wsop.cli.output import emit, err_console

app = new_app("Mark users online or offline in online-users:{T}, or list and count them.")
DEFAULT_LIST_LIMIT = 1000
PREVIEW = 50

TenantOpt = Annotated[str, typer.Option("--tenant", help="Tenant id.")]
UsersArg = Annotated[list[str], typer.Argument(help="User ids.")]


def _change(tenant, users, online, max_users, redis_url, as_json) -> None:
    result = set_online(
        tenant_store(redis_url), tenant, users, online, max_users_or_default(max_users)
    )
    verb = "online" if online else "offline"

    def render(console: Console) -> None:
        console.print(f"{result.changed} of {result.requested} user(s) newly {verb} in {tenant}")

    emit(result.to_json(), as_json, render)


@app.command("add")
def add_cmd(
    tenant: TenantOpt,
    users: UsersArg,
    max_users: MaxUsersOpt = None,
    redis_url: RedisOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the users' online bits."""
    _change(tenant, users, True, max_users, redis_url, as_json)


@app.command("remove")
def remove_cmd(
    tenant: TenantOpt,
    users: UsersArg,
    max_users: MaxUsersOpt = None,
    redis_url: RedisOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Clear the users' online bits."""
    _change(tenant, users, False, max_users, redis_url, as_json)


@app.command("list")
def list_cmd(
    tenant: TenantOpt,
    limit: Annotated[
        int,
        typer.Option("--limit", help="List at most this many (in id order); 0: every one."),
    ] = DEFAULT_LIST_LIMIT,
    redis_url: RedisOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The tenant's online users (JSON: tenant, users, count, truncated)."""
    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("[bold]reading online-users"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} bytes"),
        console=err_console,
        transient=True,
        disable=as_json or not err_console.is_terminal,
    )
    with progress:
        task = progress.add_task("read", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = list_online(tenant_store(redis_url), tenant, limit, advance)

    def render(console: Console) -> None:
        shown = ", ".join(str(u) for u in result.users[:PREVIEW])
        console.print(f"[bold]{result.count:,}[/] user(s) online in [cyan]{tenant}[/]")
        if shown:
            rest = result.count - min(PREVIEW, len(result.users))
            more = f", … (+{rest:,} more; --json lists {len(result.users):,})" if rest > 0 else ""
            console.print(shown + more, soft_wrap=True)

    emit(result.to_json(), as_json, render)


@app.command("count")
def count_cmd(tenant: TenantOpt, redis_url: RedisOpt = None, as_json: JsonOpt = False) -> None:
    """How many users of the tenant are online (JSON: tenant, count)."""
    count = count_online(tenant_store(redis_url).client, tenant)

    def render(console: Console) -> None:
        console.print(f"[bold]{count:,}[/] user(s) online in [cyan]{tenant}[/]")

    emit({"tenant": tenant, "count": count}, as_json, render)
