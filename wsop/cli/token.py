"""`wsop token`: mint a client JWT, so `wscat -H "Authorization: Bearer $(wsop token …)"` works."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from wsop import auth
from wsop.cli.app import JsonOpt, client_secret
from wsop.cli.output import emit, err_console


def token_cmd(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name.", show_default=False)],
    user: Annotated[
        str, typer.Option("--user", help="User id (integer or string).", show_default=False)
    ],
    ttl: Annotated[int, typer.Option("--ttl", help="Lifetime in seconds.")] = auth.DEFAULT_TTL_S,
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret",
            help=f"HS256 secret (default: ${auth.SECRET_ENV}, else the running local stack's; "
            "a flag is visible in `ps`).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Mint a signed token for one user of one tenant (printed alone on stdout)."""
    key = secret if secret is not None else client_secret()
    token = auth.mint_token(key, tenant, user, ttl)
    warning = auth.secret_warning(key)
    if warning:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)

    def render(console: Console) -> None:
        # soft_wrap: a token is one long word that rich would otherwise fold into lines.
        console.print(token, soft_wrap=True, markup=False, highlight=False)

    emit({"token": token}, as_json, render)
