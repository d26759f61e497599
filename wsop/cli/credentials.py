"""The credentials `wsop` reads, one way each: the JWT secret a server checks client
tokens with, the admin token servers cannot run without, the secret `wsop token` signs
with. Environment only: a secret on a command line shows in `ps`."""

from __future__ import annotations

import os
from typing import Any

from wsop.errors import UsageError


def server_secret(insecure: bool, process: str, public_keys: bool = False) -> str | None:
    """The JWT secret a server checks tokens with; `--insecure` makes it optional and
    says so loudly, because then anyone can connect as any tenant and user. With public
    keys (`--jwt-public-key`, `--jwks`) it is optional too: only HS256 tokens need it."""
    from wsop.auth import SECRET_ENV, secret_from_env, secret_warning
    from wsop.cli.output import err_console

    if insecure:
        secret = os.environ.get(SECRET_ENV) or None
        err_console.print(
            f"[bold red]WARNING: wsop {process} is running with --insecure: anyone can "
            "connect as any tenant and user with ?tenant=T&user=U. Never expose this port.[/]",
            highlight=False,
        )
    elif public_keys:
        secret = os.environ.get(SECRET_ENV) or None
    else:  # (servers have no --secret flag: a secret on a command line leaks)
        hint = ", give --jwt-public-key or --jwks, or run a local dev stack with --insecure"
        secret = secret_from_env(hint=hint)
    if secret and (warning := secret_warning(secret)):
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    return secret


def server_admin_token(process: str) -> str:
    """The stack's admin token (`WSOP_ADMIN_TOKEN`), which a server cannot run without:
    it authenticates the peer links between sidecars, the admin endpoints, and the LB's
    signed word to the sidecars. Without it any client could inject messages across
    tenants through `/peer` — so even `--insecure` (which only relaxes *client* tokens)
    does not waive it. `wsop up` makes one for its stack."""
    from wsop.httpadmin import ADMIN_TOKEN_ENV, admin_token_from_env

    token = admin_token_from_env()
    if not token:
        raise UsageError(
            f"wsop {process} needs {ADMIN_TOKEN_ENV}: the shared secret of the LB and the "
            "sidecars (peer links, admin endpoints); set the same random string on all of "
            "them, e.g. $(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def client_secret() -> str:
    """The secret `wsop token` signs with: `WSOP_SECRET`, else the running local stack's.

    `wsop up` generates a secret and keeps it in the members file (0600), so a user who
    just started the default stack can mint tokens for it without looking for it; the
    choice is said on stderr, so nobody mistakes it for their production secret.
    """
    from wsop.auth import SECRET_ENV, secret_from_env

    if os.environ.get(SECRET_ENV):
        return secret_from_env()
    from wsop.local.stack_file import members_path
    from wsop.local.stack_proc import running_record

    record = running_record()
    if record is not None and record.secret:
        from wsop.cli.output import err_console

        err_console.print(
            f"{SECRET_ENV} is not set: using the secret of the local stack ({members_path()})",
            highlight=False,
            soft_wrap=True,
        )
        return record.secret
    if record is not None:
        raise UsageError(
            f"no JWT secret: set {SECRET_ENV} (the local stack runs --insecure and needs "
            "no token: connect with ?tenant=T&user=U)"
        )
    return secret_from_env(hint=" or pass --secret (or start a local stack with `wsop up`)")


def token_checks(
    process: str,
    insecure: bool,
    jwt_public_key: str | None,
    jwks: str | None,
    leeway: float,
    max_token_lifetime: float,
) -> dict[str, Any]:
    """The config fields every server shares for checking who connects (client tokens,
    the admin token), so the LB and the sidecar read their credentials the same way."""
    from wsop.auth import SECRET_ENV

    return {
        "insecure": insecure,
        "secret": os.environ.get(SECRET_ENV) or None,
        "admin_token": server_admin_token(process),
        "jwt_public_key": jwt_public_key,
        "jwks": jwks,
        "leeway_s": leeway,
        "max_token_lifetime_s": max_token_lifetime,
    }


def publish_credential(tenant: str, sender: str | None, ttl_s: int = 300) -> str:
    """What `wsop publish` sends without `--token`: a publish token for `tenant` (as
    `sender`) minted with `WSOP_SECRET`, else with the running local stack's secret;
    on a local stack without one (`--insecure`), that stack's admin token, which the
    servers accept for any tenant. Said on stderr when it is the local stack's."""
    from wsop.auth import SECRET_ENV
    from wsop.cli.output import err_console
    from wsop.httpadmin import ADMIN_TOKEN_ENV
    from wsop.local.stack_file import members_path
    from wsop.local.stack_proc import running_record
    from wsop.publisher import mint_publish_token

    if os.environ.get(SECRET_ENV):
        return mint_publish_token(os.environ[SECRET_ENV], tenant, sender, ttl_s)
    record = running_record()
    if record is not None and record.secret:
        err_console.print(
            f"{SECRET_ENV} is not set: signing with the local stack's secret ({members_path()})",
            highlight=False,
            soft_wrap=True,
        )
        return mint_publish_token(record.secret, tenant, sender, ttl_s)
    if sender is not None:
        raise UsageError(
            f"--sender needs a publish token: set {SECRET_ENV} (a stack without a JWT secret "
            "takes only the admin token, which sends as null)"
        )
    token = os.environ.get(ADMIN_TOKEN_ENV) or (record.admin_token if record else None)
    if not token:
        raise UsageError(
            f"no credential to publish with: pass --token (or WSOP_PUBLISH_TOKEN), set "
            f"{SECRET_ENV} to mint one, or {ADMIN_TOKEN_ENV}"
        )
    return token
