"""`wsop token`: mint a client JWT, so `wscat -H "Authorization: Bearer $(wsop token …)"` works."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from wsop import auth
from wsop.cli.credentials import client_secret
from wsop.cli.options import JsonOpt
from wsop.cli.output import emit, err_console


def token_cmd(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name.", show_default=False)],
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            help="User id (integer or string); with --publish, the sender clients see "
            "(optional: null without it).",
            show_default=False,
        ),
    ] = None,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish",
            help="A backend's publish token (scope 'publish') for POST /publish and "
            "/presence; it cannot open a WebSocket session.",
        ),
    ] = False,
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
    private_key: Annotated[
        str | None,
        typer.Option(
            "--private-key",
            help="Sign with this PEM private key instead (RSA: RS256, P-256 EC: ES256); "
            "for tests and dev: production tokens come from your identity provider.",
            show_default=False,
        ),
    ] = None,
    kid: Annotated[
        str | None,
        typer.Option("--kid", help="Key id header (selects the key in the servers' --jwks)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Mint a signed token for one user of one tenant, or with --publish a backend's
    publish token (printed alone on stdout)."""
    from wsop.errors import UsageError
    from wsop.jwtkeys import SigningKey, load_private_key
    from wsop.publisher import mint_publish_token

    if user is None and not publish:
        raise UsageError("--user is required (or --publish for a backend's publish token)")
    if private_key is not None and secret is not None:
        raise UsageError("give either --secret or --private-key, not both")
    if kid is not None and private_key is None:
        raise UsageError("--kid needs --private-key (HS256 tokens are checked by the secret)")
    if private_key is not None:
        key: str | SigningKey = load_private_key(private_key, kid)
    else:
        key = secret if secret is not None else client_secret()
    if publish:
        token = mint_publish_token(key, tenant, user, ttl)
    else:
        assert user is not None
        token = auth.mint_token(key, tenant, user, ttl)
    warnings = [auth.secret_warning(key)] if isinstance(key, str) else []
    if ttl > auth.DEFAULT_MAX_LIFETIME_S:
        warnings.append(
            f"--ttl {ttl} is over the servers' default --max-token-lifetime "
            f"({auth.DEFAULT_MAX_LIFETIME_S} s): they refuse this token unless raised"
        )
    for warning in filter(None, warnings):
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)

    def render(console: Console) -> None:
        # soft_wrap: a token is one long word that rich would otherwise fold into lines.
        console.print(token, soft_wrap=True, markup=False, highlight=False)

    emit({"token": token}, as_json, render)
