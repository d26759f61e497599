"""`wsop online add|remove`: flip presence bits by hand (the sidecars do it live)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from wsop.acl.presence import set_online
from wsop.cli.app import new_app
from wsop.cli.options import JsonOpt, MaxUsersOpt, RedisOpt, max_users_or_default, tenant_store
from wsop.cli.output import emit

app = new_app("Mark users online or offline in online-users:{T}.")

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
