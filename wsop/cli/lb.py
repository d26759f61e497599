"""`wsop lb`: run the load balancer in the foreground (what `wsop up` starts)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from wsop.cli.app import (
    AllowedOriginsOpt,
    MembersFileOpt,
    NamespaceOpt,
    PeersOpt,
    SelectorOpt,
    ServiceOpt,
    membership_source,
    parse_origins,
    server_admin_token,
    server_secret,
)
from wsop.k8s.discovery import DEFAULT_SELECTOR

Host = Annotated[str, typer.Option("--host", help="Interface to listen on.")]
Port = Annotated[int, typer.Option("--port", help="TCP port for clients and admin HTTP.")]
Insecure = Annotated[
    bool,
    typer.Option("--insecure", help="Trust ?tenant=T&user=U without a token (local dev only)."),
]
Algo = Annotated[str | None, typer.Option("--algo", help="Ring algorithm (default: maglev).")]
Name = Annotated[str, typer.Option("--name", help="Name reported by /healthz.")]
Drain = Annotated[
    float, typer.Option("--drain-seconds", help="On SIGTERM, close clients over this window.")
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
    allowed_origins: AllowedOriginsOpt = None,
) -> None:
    """Run the WebSocket load balancer: /ws relays to the ring owner; /healthz, /metrics,
    /connections answer plain HTTP on the same port."""
    from wsop.errors import UsageError
    from wsop.lb import LBConfig, run
    from wsop.ring import DEFAULT_ALGORITHM, check_routing_algorithm

    algo = algo or DEFAULT_ALGORITHM
    check_routing_algorithm(algo)  # unknown or unroutable: exit 2 before binding anything
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {port}")
    if drain_seconds < 0:
        raise UsageError("--drain-seconds must be >= 0")
    source = membership_source(members_file, peers, namespace, selector, service)
    origins = parse_origins(allowed_origins)
    admin_token = server_admin_token("lb")
    secret = server_secret(insecure, "lb")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    run(
        LBConfig(
            host=host,
            port=port,
            source=source,
            algo=algo,
            insecure=insecure,
            secret=secret,
            admin_token=admin_token,
            name=name,
            drain_s=drain_seconds,
            allowed_origins=origins,
        )
    )
