"""`wsop sidecar`: run one proxy sidecar in the foreground (normally started by `wsop up`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer

from wsop import protocol
from wsop.cli.app import (
    AllowedOriginsOpt,
    MembersFileOpt,
    NamespaceOpt,
    PeersOpt,
    RedisOpt,
    SelectorOpt,
    ServiceOpt,
    membership_source,
    parse_origins,
    server_admin_token,
    server_secret,
)
from wsop.errors import BackendUnavailable, UsageError
from wsop.k8s.discovery import DEFAULT_SELECTOR

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
) -> None:
    """Hold client connections, keep presence, route direct and team messages."""
    from wsop.acl.live import LiveAcl
    from wsop.backend import connect, connect_async, resolve_url
    from wsop.ring import DEFAULT_ALGORITHM, check_routing_algorithm
    from wsop.sidecar.app import Sidecar, SidecarConfig
    from wsop.sidecar.presence import check_timings

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    check_timings(heartbeat, lease, 5.0)  # bad values are usage errors, before any I/O
    algo = algo or DEFAULT_ALGORITHM
    check_routing_algorithm(algo)  # unknown or unroutable: fail before anything starts
    origins = parse_origins(allowed_origins)
    admin_token = server_admin_token("sidecar")
    secret = server_secret(insecure, "sidecar")
    url = resolve_url(redis_url)
    connect(url).close()  # fail fast, with the URL in the message
    members = membership_source(members_file, peers, namespace, selector, service)
    config = SidecarConfig(
        name=name,
        host=host,
        port=port,
        algo=algo,
        insecure=insecure,
        secret=secret,
        admin_token=admin_token,
        max_frame_bytes=max_frame_bytes,
        upstream=upstream,
        allowed_origins=origins,
        heartbeat_s=heartbeat,
        lease_s=lease,
    )
    if upstream and not upstream.startswith(("ws://", "wss://")):
        raise UsageError(f"--upstream must be a ws:// or wss:// URL, got {upstream!r}")
    run_server(lambda: Sidecar(config, LiveAcl(connect_async(url)), members), name)


def run_server(factory, label: str) -> None:
    """Run an asyncio server object until SIGTERM/SIGINT, then its graceful shutdown."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = factory()
        try:
            port = await server.start()
        except OSError as exc:
            raise BackendUnavailable(f"{label}: cannot listen: {exc.strerror or exc}") from None
        print(f"{label} listening on port {port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.shutdown()

    asyncio.run(main())
