"""The Typer plumbing every command group shares: error-to-exit-code mapping, common options.

Errors are mapped here and nowhere else: a `WsopError` becomes one line on stderr and
its exit code; anything unexpected becomes one line too (set WSOP_DEBUG=1 for the
traceback), so users never see a stack trace for a bad input.

This module is imported by every `wsop` invocation, `--version` included, so it
imports nothing heavy at the top: rich, redis and the library load when a command
needs them (tests/test_cli_startup.py holds it to that).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from wsop.errors import BackendError, BackendUnavailable, UsageError, WsopError

JSON_OPTION_HELP = "Print one JSON document on stdout instead of tables."
# `-1` where a user id goes: click reads it as an unknown option (see RootGroup.main)
SIGNED_NUMBER = re.compile(r"^-\d+$")


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """Typer's own control-flow exceptions (it vendors click in recent versions)."""
    found: list[type[BaseException]] = [typer.Exit, typer.Abort]
    try:
        from typer._click import exceptions as vendored

        found.append(vendored.ClickException)
    except ImportError:  # older typer on upstream click
        pass
    import click

    found += [click.exceptions.Exit, click.exceptions.Abort, click.ClickException]
    return tuple(found)


PASSTHROUGH = _click_exceptions()


def print_error(message: str) -> None:
    """The one `error:` line on stderr (never wrapped: it may hold a command to copy)."""
    from wsop.cli.output import err_console

    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def fail(message: str, code: int) -> typer.Exit:
    print_error(message)
    return typer.Exit(code)


def _stdout_gone() -> typer.Exit:
    """The reader of our stdout went away (`wsop … | head`): stop quietly. stdout is
    pointed at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return typer.Exit(1)


def _backend_error(exc: BaseException) -> WsopError | None:
    """A redis-py error as ours (checked through sys.modules: a command that never
    imported redis cannot have raised one, and importing it here would cost every
    command ~100 ms)."""
    redis = sys.modules.get("redis")
    if redis is None:
        return None
    if isinstance(exc, redis.ConnectionError):
        return BackendUnavailable(f"lost the Redis connection: {exc}")
    if isinstance(exc, redis.RedisError):
        return BackendError(f"Redis error: {exc}")
    return None


class WsopGroup(TyperGroup):
    """A Typer group that turns library errors into exit codes (once, at the root)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PASSTHROUGH:
            raise
        except WsopError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:
            raise _stdout_gone() from None
        except Exception as exc:
            mapped = _backend_error(exc)
            if mapped is not None:
                raise fail(str(mapped), mapped.exit_code) from None
            if os.environ.get("WSOP_DEBUG"):
                raise
            name = type(exc).__name__
            raise fail(f"internal error ({name}): {exc} — rerun with WSOP_DEBUG=1", 1) from None


def _one_line(exc: BaseException) -> str:
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return " ".join(message.split()) + hint


def _signed_number_typo(exc: BaseException, args: list[str]) -> str | None:
    """`wsop online add --tenant acme -1`: click sees an unknown option `-1`. Where the
    command takes user ids, say what the id parser says of `-- -1`."""
    if type(exc).__name__ != "NoSuchOption":
        return None
    ctx = getattr(exc, "ctx", None)
    params = getattr(getattr(ctx, "command", None), "params", ())
    if not any(getattr(p, "name", None) == "users" for p in params):
        return None
    for arg in args:
        if SIGNED_NUMBER.match(arg):
            return f"user id {arg} is negative"
    return None


class RootGroup(WsopGroup):
    """The root also owns argument-parsing errors: one line, exit 2, no help box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from wsop.cli import helpfmt

        helpfmt.install()
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except BrokenPipeError:
            _stdout_gone()
            sys.exit(1)
        except PASSTHROUGH as exc:
            if not standalone_mode:
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":
                # rich help is already on stdout; the message left to show is empty and
                # would put a stray blank line on stderr
                if exc.format_message().strip():  # type: ignore[attr-defined]
                    exc.show()  # type: ignore[attr-defined]
                sys.exit(getattr(exc, "exit_code", 2))
            if isinstance(exc, typer.Abort) or type(exc).__name__ == "Abort":
                print("aborted", file=sys.stderr)
                sys.exit(1)
            print_error(_signed_number_typo(exc, argv) or _one_line(exc))
            sys.exit(getattr(exc, "exit_code", 2))
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def new_app(
    help_text: str, cls: type[TyperGroup] = WsopGroup, name: str | None = None
) -> typer.Typer:
    """A command group with wsop's conventions (no pretty tracebacks, -h, no completion)."""
    return typer.Typer(
        name=name,
        help=help_text,
        cls=cls,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_OPTION_HELP)]
RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        envvar="WSOP_REDIS_URL",
        help="Redis URL (redis://, unix://, redis+cluster://). Default: the embedded server.",
        show_default=False,
    ),
]
MaxUsersOpt = Annotated[
    int | None,
    typer.Option(
        "--max-users",
        help="Largest user id + 1 accepted per tenant (default 2^24, env WSOP_MAX_USERS).",
        show_default=False,
    ),
]


def max_users_or_default(value: int | None) -> int:
    from wsop.acl.ids import default_max_users

    if value is None:
        return default_max_users()
    if value <= 0:
        raise UsageError("--max-users must be a positive integer")
    return value


def tenant_store(url: str | None):
    """A `TenantStore` over the Redis the flags (or the embedded default) point at."""
    from wsop.acl.store import TenantStore
    from wsop.backend import connect

    return TenantStore(connect(url))


# Where the sidecars are (shared by `wsop lb` and `wsop sidecar`): exactly one source.
MembersFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--members-file", metavar="FILE", help="Members file to follow (what `wsop up` writes)."
    ),
]
PeersOpt = Annotated[
    str | None,
    typer.Option("--peers", help="Fixed sidecars instead: s0=ws://127.0.0.1:9001,s1=…"),
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option("--namespace", help="Kubernetes: discover sidecar pods in this namespace."),
]
SelectorOpt = Annotated[
    str,
    typer.Option("--selector", help="Kubernetes: label selector of the sidecar pods."),
]
ServiceOpt = Annotated[
    str | None,
    typer.Option("--service", help="Kubernetes: also require readiness in this Service's slices."),
]


def membership_source(
    members_file: Path | None,
    peers: str | None,
    namespace: str | None,
    selector: str,
    service: str | None,
):
    """The one membership source the flags name (local file, static list or Kubernetes)."""
    from wsop.discovery import source_from_flags

    if namespace is None:
        return source_from_flags(members_file, peers)
    if members_file is not None or peers is not None:
        raise UsageError("give one of --members-file, --peers or --namespace")
    from wsop.k8s.discovery import kubernetes_source

    return kubernetes_source(namespace, selector, service)


# How the servers check client tokens besides WSOP_SECRET (docs/security.md, "Tokens").
JwtPublicKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--jwt-public-key",
        envvar="WSOP_JWT_PUBLIC_KEY",
        help="PEM public key client tokens are signed for (RSA: RS256, P-256 EC: ES256).",
        show_default=False,
    ),
]
JwksOpt = Annotated[
    str | None,
    typer.Option(
        "--jwks",
        envvar="WSOP_JWKS",
        help="JWKS file of token keys (RS256/ES256); a token's 'kid' picks one.",
        show_default=False,
    ),
]
LeewayOpt = Annotated[
    int,
    typer.Option(
        "--leeway",
        envvar="WSOP_TOKEN_LEEWAY",
        help="Seconds of clock skew forgiven on exp/nbf/iat.",
    ),
]
MaxTokenLifetimeOpt = Annotated[
    int,
    typer.Option(
        "--max-token-lifetime",
        envvar="WSOP_MAX_TOKEN_LIFETIME",
        help="Refuse tokens living longer than this (exp - iat, seconds); 0: no limit.",
    ),
]


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


AllowedOriginsOpt = Annotated[
    str | None,
    typer.Option(
        "--allowed-origins",
        metavar="ORIGINS",
        help="Comma-separated browser origins to admit (e.g. https://app.example.com); "
        "default: any. Clients that send no Origin header (non-browsers) are always admitted.",
    ),
]


def parse_origins(spec: str | None) -> tuple[str, ...] | None:
    """`--allowed-origins`: None (any) or the origins, each scheme://host[:port]."""
    if spec is None:
        return None
    origins = tuple(o.strip().rstrip("/") for o in spec.split(",") if o.strip())
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise UsageError(
                f"--allowed-origins: {origin!r} is not an origin (scheme://host[:port])"
            )
    if not origins:
        raise UsageError("--allowed-origins is empty; leave it out to admit any origin")
    return origins


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


QuotasFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--quotas",
        metavar="FILE",
        help="Per-tenant limits (JSON or YAML: default + tenants; docs/security.md).",
    ),
]
PerUserOpt = Annotated[
    int,
    typer.Option("--max-connections-per-user", metavar="N", help="Across the stack; 0: no limit."),
]
PerTenantOpt = Annotated[
    int,
    typer.Option(
        "--max-connections-per-tenant", metavar="N", help="Across the stack; 0: no limit."
    ),
]
RateOpt = Annotated[
    float,
    typer.Option(
        "--max-messages-per-second",
        metavar="R",
        help="Per connection (bursts of 2R); over it: rate_limited errors. 0: no limit.",
    ),
]
RecipientsOpt = Annotated[
    int,
    typer.Option(
        "--max-recipients", metavar="N", help="Online recipients of one message; 0: no limit."
    ),
]


def build_quotas(path: Path | None, per_user: int, per_tenant: int, rate: float, recipients: int):
    """The stack's `Quotas`: the flags are the defaults a quotas file overrides per
    tenant (and may override for everyone in its "default" section)."""
    from wsop.quotas import Limits, Quotas

    base = Limits(per_user, per_tenant, rate, recipients)
    return Quotas.load(path, base) if path is not None else Quotas(base)
