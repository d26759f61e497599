"""`wsop sidecar`: run one proxy sidecar in the foreground (normally started by `wsop up`)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from wsop import protocol, shell
from wsop.auth import DEFAULT_LEEWAY_S, DEFAULT_MAX_LIFETIME_S
from wsop.cli.credentials import server_secret, token_checks
from wsop.cli.options import (
    AllowedOriginsOpt,
    CaOpt,
    CertfileOpt,
    HistoryAgeOpt,
    HistoryMemoryOpt,
    HistoryMessagesOpt,
    HistoryOpt,
    JwksOpt,
    JwtPublicKeyOpt,
    KeyfileOpt,
    LeewayOpt,
    MaxTokenLifetimeOpt,
    MembersFileOpt,
    NamespaceOpt,
    PeersOpt,
    PerTenantOpt,
    PerUserOpt,
    PublishRateOpt,
    QuotasFileOpt,
    RateOpt,
    RecipientsOpt,
    RedisOpt,
    SelectorOpt,
    ServiceOpt,
    build_quotas,
    membership_source,
    parse_origins,
    tls_settings,
)
from wsop.k8s.discovery import DEFAULT_SELECTOR
from wsop.quotas import (
    DEFAULT_CONNECTIONS_PER_USER,
    DEFAULT_MAX_RECIPIENTS,
    DEFAULT_MESSAGES_PER_SECOND,
    DEFAULT_PUBLISHES_PER_SECOND,
)

HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default).")]


def sidecar_cmd(
    name: Annotated[str, typer.Option("--name", help="This sidecar's member name on the ring.")],
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port for /ws, /peer and admin HTTP.")] = 0,
    members_file: MembersFileOpt = None,
    peers: PeersOpt = None,
    namespace: NamespaceOpt = None,
    selector: SelectorOpt = DEFAULT_SELECTOR,
    service: ServiceOpt = None,
    algo: Annotated[str, typer.Option("--algo", help="Ring algorithm (see `wsop ring`).")] = "",
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Accept ?tenant=&user= without a token (dev only).")
    ] = False,
    max_frame_bytes: Annotated[
        int, typer.Option("--max-frame-bytes", help="Larger client frames are closed with 1009.")
    ] = protocol.DEFAULT_MAX_FRAME_BYTES,
    upstream: Annotated[
        str | None,
        typer.Option(
            "--upstream",
            help="App container to mirror each client to (ws://127.0.0.1:3001); its frames "
            "are routed as the user's own.",
        ),
    ] = None,
    redis_url: RedisOpt = None,
    allowed_origins: AllowedOriginsOpt = None,
    heartbeat: Annotated[
        float,
        typer.Option(
            "--heartbeat", help="Seconds between presence heartbeats (lease renewal, reaping)."
        ),
    ] = 2.0,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            help="Seconds a sidecar's presence outlives its last heartbeat (> 2 x heartbeat); "
            "a killed sidecar's users are offline within lease + heartbeat.",
        ),
    ] = 10.0,
    slow_client: Annotated[
        float,
        typer.Option(
            "--slow-client",
            help="Seconds a client may keep over 1 MiB of its messages unread before it is "
            "closed (1008, counted in wsop_slow_clients_closed_total).",
        ),
    ] = 10.0,
    quotas: QuotasFileOpt = None,
    max_connections_per_user: PerUserOpt = DEFAULT_CONNECTIONS_PER_USER,
    max_connections_per_tenant: PerTenantOpt = 0,
    max_messages_per_second: RateOpt = DEFAULT_MESSAGES_PER_SECOND,
    max_recipients: RecipientsOpt = DEFAULT_MAX_RECIPIENTS,
    max_publishes_per_second: PublishRateOpt = DEFAULT_PUBLISHES_PER_SECOND,
    jwt_public_key: JwtPublicKeyOpt = None,
    jwks: JwksOpt = None,
    leeway: LeewayOpt = DEFAULT_LEEWAY_S,
    max_token_lifetime: MaxTokenLifetimeOpt = DEFAULT_MAX_LIFETIME_S,
    certfile: CertfileOpt = None,
    keyfile: KeyfileOpt = None,
    ca: CaOpt = None,
    history: HistoryOpt = "memory",
    history_messages: HistoryMessagesOpt = 100,
    history_age: HistoryAgeOpt = 120.0,
    history_memory: HistoryMemoryOpt = 256,
) -> None:
    """Hold client connections, keep presence, route direct and team messages."""
    from wsop.backend import connect
    from wsop.local.embedded import resolve_url
    from wsop.ring import DEFAULT_ALGORITHM
    from wsop.sidecar import Sidecar, SidecarConfig

    algo = algo or DEFAULT_ALGORITHM
    origins = parse_origins(allowed_origins)
    limits = build_quotas(
        quotas, max_connections_per_user, max_connections_per_tenant,
        max_messages_per_second, max_recipients, max_publishes_per_second,
    )  # fmt: skip
    # every flag is checked by the config (as for library callers), before any I/O
    config = SidecarConfig(
        name=name,
        host=host,
        port=port,
        algo=algo,
        max_frame_bytes=max_frame_bytes,
        upstream=upstream,
        allowed_origins=origins,
        quotas=limits,
        heartbeat_s=heartbeat,
        lease_s=lease,
        slow_client_s=slow_client,
        tls=tls_settings(certfile, keyfile, ca),
        history=history,
        history_messages=history_messages,
        history_age_s=history_age,
        history_memory_mb=history_memory,
        **token_checks("sidecar", insecure, jwt_public_key, jwks, leeway, max_token_lifetime),
    )
    server_secret(insecure, "sidecar", bool(jwt_public_key or jwks))  # required? warnings
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    members = membership_source(members_file, peers, namespace, selector, service)
    url = resolve_url(redis_url)
    connect(url).close()  # fail fast, with the URL in the message
    shell.run(lambda: Sidecar.create(config, url, members))
