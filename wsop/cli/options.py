"""The options several commands share, each declared once, and the small parsers behind
them. Nothing heavy at import: every `wsop` invocation loads this module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsop.errors import UsageError

JSON_OPTION_HELP = "Print one JSON document on stdout instead of tables."

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
    from wsop.names import default_max_users

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
PublishRateOpt = Annotated[
    float,
    typer.Option(
        "--max-publishes-per-second",
        metavar="R",
        help="POST /publish per publisher on this sidecar (bursts of 2R); over it: 429. "
        "0: no limit.",
    ),
]


def build_quotas(
    path: Path | None,
    per_user: int,
    per_tenant: int,
    rate: float,
    recipients: int,
    publish_rate: float | None = None,
):
    """The stack's `Quotas`: the flags are the defaults a quotas file overrides per
    tenant (and may override for everyone in its "default" section)."""
    from wsop.checks import check_rate
    from wsop.quotas import DEFAULT_PUBLISHES_PER_SECOND, Limits, Quotas

    publishes = DEFAULT_PUBLISHES_PER_SECOND if publish_rate is None else publish_rate
    # named by flag here: Limits would refuse them too, but as "quota …" (a file's words)
    check_rate(rate, "--max-messages-per-second")
    check_rate(publishes, "--max-publishes-per-second")
    base = Limits(per_user, per_tenant, rate, recipients, publishes)
    return Quotas.load(path, base) if path is not None else Quotas(base)


# TLS of the servers (docs/kubernetes.md, "TLS"): wss:// for clients and peers.
CertfileOpt = Annotated[
    str | None,
    typer.Option(
        "--certfile",
        metavar="FILE",
        help="Serve wss:// with this certificate (PEM chain); re-read on SIGHUP.",
    ),
]
KeyfileOpt = Annotated[
    str | None, typer.Option("--keyfile", metavar="FILE", help="The certificate's private key.")
]
CaOpt = Annotated[
    str | None,
    typer.Option(
        "--ca",
        metavar="FILE",
        help="CA to trust when dialling wss:// sidecars (default: the system's CAs).",
    ),
]


def tls_settings(certfile: str | None, keyfile: str | None, ca: str | None):
    """The server's `TlsSettings` (checked: files readable, key matching the certificate)."""
    from wsop.tls import TlsSettings

    return TlsSettings(certfile, keyfile, ca)


# Recovery (wsop/sidecar/history.py): shared by `wsop sidecar` and `wsop up`.
HistoryOpt = Annotated[
    str,
    typer.Option(
        "--history",
        help="Where users' recent messages are kept for ?since= recovery: memory (on the "
        "user's owner), redis (Streams: survives a sidecar crash) or off.",
    ),
]
HistoryMessagesOpt = Annotated[
    int, typer.Option("--history-messages", help="Messages kept per user (history window).")
]
HistoryAgeOpt = Annotated[
    float,
    typer.Option(
        "--history-age",
        help="Seconds a message is kept, and how long a user may be offline and still recover.",
    ),
]
HistoryMemoryOpt = Annotated[
    int, typer.Option("--history-memory", help="MiB the in-memory history may use per sidecar.")
]
