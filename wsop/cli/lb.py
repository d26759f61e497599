"""`wsop lb`: run the load balancer in the foreground (what `wsop up` starts)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from wsop.auth import DEFAULT_LEEWAY_S, DEFAULT_MAX_LIFETIME_S
from wsop.cli.credentials import server_secret, token_checks
from wsop.cli.options import (
    AllowedOriginsOpt,
    CaOpt,
    CertfileOpt,
    JwksOpt,
    JwtPublicKeyOpt,
    KeyfileOpt,
    LeewayOpt,
    MaxTokenLifetimeOpt,
    MembersFileOpt,
    NamespaceOpt,
    PeersOpt,
    SelectorOpt,
    ServiceOpt,
    membership_source,
    parse_origins,
    tls_settings,
)
from wsop.k8s.discovery import DEFAULT_SELECTOR
from wsop.protocol import DEFAULT_MAX_FRAME_BYTES
from wsop.trunk import DEFAULT_PER_SIDECAR

Host = Annotated[str, typer.Option("--host", help="Interface to listen on.")]
Port = Annotated[int, typer.Option("--port", help="TCP port for clients and admin HTTP.")]
Insecure = Annotated[
    bool,
    typer.Option("--insecure", help="Trust ?tenant=T&user=U without a token (local dev only)."),
]
Algo = Annotated[str | None, typer.Option("--algo", help="Ring algorithm (default: maglev).")]
Name = Annotated[str, typer.Option("--name", help="Name reported by /healthz.")]
Trunks = Annotated[
    int,
    typer.Option(
        "--trunks",
        envvar="WSOP_LB_TRUNKS",
        help="Persistent connections to each sidecar carrying all clients' legs "
        "(multiplexed); 0: one connection per client.",
    ),
]
Drain = Annotated[
    float, typer.Option("--drain-seconds", help="On SIGTERM, close clients over this window.")
]
MaxFrame = Annotated[
    int,
    typer.Option(
        "--max-frame-bytes",
        help="Largest POST /publish body forwarded (give the sidecars' --max-frame-bytes).",
    ),
]


def lb_cmd(
    host: Host = "127.0.0.1",
    port: Port = 8765,
    members_file: MembersFileOpt = None,
    peers: PeersOpt = None,
    namespace: NamespaceOpt = None,
    selector: SelectorOpt = DEFAULT_SELECTOR,
    service: ServiceOpt = None,
    insecure: Insecure = False,
    algo: Algo = None,
    name: Name = "lb",
    drain_seconds: Drain = 1.0,
    max_frame_bytes: MaxFrame = DEFAULT_MAX_FRAME_BYTES,
    trunks: Trunks = DEFAULT_PER_SIDECAR,
    jwt_public_key: JwtPublicKeyOpt = None,
    jwks: JwksOpt = None,
    leeway: LeewayOpt = DEFAULT_LEEWAY_S,
    max_token_lifetime: MaxTokenLifetimeOpt = DEFAULT_MAX_LIFETIME_S,
    allowed_origins: AllowedOriginsOpt = None,
    certfile: CertfileOpt = None,
    keyfile: KeyfileOpt = None,
    ca: CaOpt = None,
) -> None:
    """Run the WebSocket load balancer: /ws relays to the ring owner; /healthz, /metrics,
    /connections answer plain HTTP on the same port, and /publish, /presence are
    forwarded to a sidecar."""
    from wsop.lb import LBConfig, run
    from wsop.ring import DEFAULT_ALGORITHM

    source = membership_source(members_file, peers, namespace, selector, service)
    # every flag is checked by the config (as for library callers), before any I/O
    config = LBConfig(
        host=host,
        port=port,
        source=source,
        algo=algo or DEFAULT_ALGORITHM,
        name=name,
        drain_s=drain_seconds,
        max_frame_bytes=max_frame_bytes,
        trunks=trunks,
        tls=tls_settings(certfile, keyfile, ca),
        **token_checks("lb", insecure, jwt_public_key, jwks, leeway, max_token_lifetime),
        allowed_origins=parse_origins(allowed_origins),
    )
    server_secret(insecure, "lb", bool(jwt_public_key or jwks))  # required? warnings
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    run(config)
