"""`wsop lb`: accept client WebSockets, authenticate, relay each one to its ring owner.

The LB decides everything in `process_request`, before the upgrade: admin paths get a
plain HTTP answer, a `/ws` handshake without a valid identity gets a one-line 401, and
an accepted one is routed and its sidecar leg *dialled* before the client gets its 101.
So a client whose `connect()` returned is reachable at once (a message to it is not
reported undelivered because its sidecar does not know it yet), and a sidecar's refusal
becomes the client's own HTTP answer, with the sidecar's reason (403 for a user the
tenant cannot hold, 503 when no sidecar can take it). Routing uses the same placement
the sidecars build from the same membership (`build(algo, names)`), rebuilt only when
the membership changes, never per connection.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.http11 import Request, Response

from wsop import httpapi, shell
from wsop.auth import (
    AuthError,
    Identity,
    identity_from_request,
)
from wsop.discovery import Members
from wsop.errors import WsopError
from wsop.httpadmin import (
    PROMETHEUS_CONTENT_TYPE,
    admin_refusal,
    drop_subprotocol_callback,
    json_response,
    method_refusal,
    origins_option,
    path_of,
    request_refusal,
    select_subprotocol,
    text_response,
)
from wsop.lb.api import LBApi
from wsop.lb.config import LBConfig
from wsop.lb.dial import WS_PATH, dialer
from wsop.lb.handshake import LBClientConnection, LBServerConnection
from wsop.lb.relay import TRY_AGAIN_LATER, Dial, Relay
from wsop.lb.stats import LBStats, make_registry, render
from wsop.lb.trunks import LBTrunks
from wsop.protocol import CloseCode
from wsop.ring import build
from wsop.ring.base import Placement
from wsop.shell import MembershipWatcher
from wsop.tls import reload as reload_certificates
from wsop.trunk.metrics import TrunkCollector

log = logging.getLogger("wsop.lb")


@dataclass(frozen=True, slots=True)
class Leg:
    """A client's sidecar connection, opened during the client's handshake."""

    identity: Identity
    owner: str
    upstream: LBClientConnection
    dial: Dial


class LoadBalancer:
    """The LB's state and its websockets callbacks; `serve()` runs it until stopped."""

    def __init__(self, config: LBConfig) -> None:
        self.config = config
        self.verifier = config.token_verifier()
        self.stats = LBStats()
        self.registry = make_registry(self.stats, config.name)
        self.members: Members = {}
        self.placement: Placement | None = None
        self.relays: set[Relay] = set()
        self._legs: weakref.WeakKeyDictionary[ServerConnection, Leg] = weakref.WeakKeyDictionary()
        self._closing: set[asyncio.Task[None]] = set()  # legs of clients gone, closing
        self.server: Server | None = None
        self._stopping = False
        self._server_ssl = config.tls.server_context()
        self._client_ssl = config.tls.client_context()
        self.api = LBApi(self, config.max_frame_bytes, self._client_ssl)
        self.trunks = (
            LBTrunks(
                config.trunks,
                config.name,
                config.admin_token or "",
                self._client_ssl,
                config.open_timeout,
            )  # fmt: skip
            if config.trunks
            else None
        )
        if self.trunks is not None:
            self.registry.register(TrunkCollector(self.trunks.stats, "wsop_lb"))

    # --- membership -------------------------------------------------------------------
    def set_members(self, members: Members) -> None:
        """Adopt a new membership: rebuild the placement once, here, not per connection."""
        self._adopt(members, self._placement(members))

    def _adopt(self, members: Members, placement: Placement | None) -> None:
        self.members, self.placement = dict(members), placement
        if self.trunks is not None:
            self.trunks.retire(set(members.values()))
        log.info("membership: %s", ", ".join(sorted(members)) or "(no sidecars)")

    def route(self, identity: Identity) -> tuple[str, str] | None:
        """(owner name, owner base url) for a client, or None when there are no sidecars."""
        placement = self.placement
        if placement is None:
            return None
        owner = placement.owner((identity.tenant, identity.user))
        return owner, self.members[owner]

    def _placement(self, members: Members) -> Placement | None:
        return build(self.config.algo, list(members)) if members else None

    # --- handshake: admin HTTP, authentication, the sidecar leg ------------------------
    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        api_path = path_of(request)
        if api_path in httpapi.METHODS:  # JSON answers for everything (wsop.lb.api)
            return await self.api.answer(connection, request, api_path)
        malformed = request_refusal(request)  # duplicate headers: 400, never a 500
        if malformed:
            self.stats.auth_failures += 1
            return text_response(connection, 400, malformed)
        if request.method != "GET":  # before a /ws dials a sidecar for nothing
            return method_refusal(connection, request.method)
        path = urlsplit(request.path).path
        if path == WS_PATH:
            try:
                identity = identity_from_request(
                    request.path, request.headers, self.verifier, self.config.insecure
                )
            except AuthError as exc:  # 401, or 400 for a malformed Authorization header
                self.stats.auth_failures += 1
                return text_response(connection, exc.http_status, str(exc))
            return await self._open_leg(connection, request, identity)
        if path == "/healthz":
            return json_response(connection, 200, {"status": "ok", "name": self.config.name})
        if path in ("/metrics", "/connections"):
            refused = admin_refusal(request.headers, self.config.admin_token)
            if refused:
                return text_response(connection, 401, refused)
            if path == "/metrics":
                metrics = render(self.registry)
                return text_response(connection, 200, metrics, PROMETHEUS_CONTENT_TYPE)
            return json_response(connection, 200, self.connections_payload())
        return text_response(connection, 404, f"no such path {path!r}: try {WS_PATH}")

    def misplaced(self) -> list[tuple[Relay, str, str]]:
        """Relays whose client the current placement puts elsewhere: (relay, owner, url).

        The rebalance seam: a rebalancer calls `relay.switch_to(owner, url)` on these
        (rate-limited), instead of closing clients and letting them reconnect.
        """
        placement, moves = self.placement, []
        if placement is None:
            return []
        for relay in list(self.relays):
            if relay.key is None or relay.finished:
                continue
            owner = placement.owner(relay.key)
            if owner != relay.owner:
                moves.append((relay, owner, self.members[owner]))
        return moves

    def connections_payload(self) -> dict[str, Any]:
        """`/connections`: relayed connections per sidecar (every member listed, even at 0)."""
        counts = dict.fromkeys(self.members, 0)
        counts.update(self.stats.per_sidecar)
        sidecars = [
            {"name": name, "url": self.members.get(name), "connections": counts[name]}
            for name in sorted(counts)
        ]
        payload = {
            "name": self.config.name,
            "connections": self.stats.connections,
            "sidecars": sidecars,
        }
        return payload | ({"trunks": self.trunks.report()} if self.trunks else {})

    # --- connections ------------------------------------------------------------------
    def _dialer(self, request: Request, identity: Identity, peer: str = "") -> Dial:
        """The client's sidecar leg, over TCP or a trunk (`wsop.lb.dial`)."""
        cfg = self.config
        return dialer(
            request, identity, admin_token=cfg.admin_token, open_timeout=cfg.open_timeout,
            client_ssl=self._client_ssl, trunks=self.trunks, peer=peer,
        )  # fmt: skip

    async def _open_leg(
        self, connection: ServerConnection, request: Request, identity: Identity
    ) -> Response | None:
        """Dial the client's sidecar before answering the client: None (→ 101) once the
        sidecar accepted, else the HTTP refusal the client gets instead."""
        route = self.route(identity)
        if route is None or self._stopping:
            self.stats.no_sidecar += 1
            return text_response(connection, 503, "no sidecars available; try again later")
        owner, url = route
        assert isinstance(connection, LBServerConnection)
        if connection.lost:  # reset right after its request: nothing to dial for
            return text_response(connection, 503, "client gone")
        try:
            address = connection.remote_address
        except (AttributeError, OSError):  # uvloop: the socket closed under the request
            address = None
        peer = f"{address[0]}:{address[1]}" if address else ""
        dial = self._dialer(request, identity, peer)
        try:
            upstream = await dial(url, None)
        except InvalidStatus as exc:
            status = exc.response.status_code
            self.stats.upstream_failures[f"http_{status}"] += 1
            why = exc.response.body.decode("utf-8", "replace").strip().splitlines()
            reason = f"sidecar {owner} refused: {why[0] if why else f'HTTP {status}'}"
            # 4xx: this client may not connect (bad identity); 5xx: try again later
            return text_response(connection, status if 400 <= status < 600 else 502, reason)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.stats.upstream_failures["connect"] += 1
            log.warning("cannot reach sidecar %s at %s: %s", owner, url, exc)
            return text_response(connection, 503, f"sidecar {owner} unavailable; try again")
        if connection.lost or self._stopping:  # the client gave up, or SIGTERM, meanwhile
            code = CloseCode.NORMAL if connection.lost else CloseCode.GOING_AWAY
            await upstream.close(code, "")
            return text_response(connection, 503, "lb shutting down")
        self._legs[connection] = Leg(identity, owner, upstream, dial)
        connection.on_lost = self._client_lost
        return None

    def _client_lost(self, connection: LBServerConnection) -> None:
        """A client gone before `handler` took its leg: close the leg now, or the sidecar
        keeps a connection nobody reads (online, counted in the user's quota, acked as
        delivered) until its keepalive gives up a minute later."""
        leg = self._legs.pop(connection, None)
        if leg is None:
            return  # the relay has it (and closes it), or it was never stored
        self.stats.orphaned_legs += 1
        task = asyncio.get_running_loop().create_task(leg.upstream.close(CloseCode.GOING_AWAY))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def handler(self, connection: ServerConnection) -> None:
        """Hand both sockets to a raw `Relay` and return (the relay needs no task: it runs
        on transport callbacks until both sides close)."""
        assert isinstance(connection, LBServerConnection)
        leg = self._legs.pop(connection, None)
        if leg is None:  # (a 101 is only sent after `_open_leg` stored the leg)
            await connection.close(TRY_AGAIN_LATER, "no sidecar leg")
            return
        if self._stopping:  # SIGTERM arrived between the 101 and now
            await asyncio.gather(
                leg.upstream.close(CloseCode.GOING_AWAY, "lb shutting down"),
                connection.close(CloseCode.SERVICE_RESTART, "lb restarting"),
            )
            return
        identity, owner = leg.identity, leg.owner
        key = (identity.tenant, identity.user)
        drop_subprotocol_callback(connection.protocol)  # a cycle through the connection
        relay = Relay(
            connection,
            leg.upstream,
            owner,
            leg.dial,
            self.stats,
            key,
            self.config.move_drain_s,
            on_done=self._relay_done,
            allow_move=self._is_member,
        )
        self.stats.accepted += 1
        self.stats.per_sidecar[owner] += 1
        self.relays.add(relay)
        relay.start()

    def _is_member(self, name: str, url: str) -> bool:
        return self.members.get(name) == url

    def _relay_done(self, relay: Relay) -> None:
        self.relays.discard(relay)
        self.stats.closed(relay.owner)

    # --- running ----------------------------------------------------------------------
    async def start(self) -> int:
        """Listen, follow the membership; the port listened on."""
        if not self.config.admin_token:  # closed by default (cli.credentials)
            raise WsopError("the LB needs an admin token: it signs its word to the sidecars")
        self.set_members(self.config.source.current())
        try:
            self.server = await serve(
                self.handler,
                self.config.host,
                self.config.port,
                process_request=self.process_request,
                compression=None,  # frames pass through raw: no extension may be negotiated
                ping_interval=None,  # pings pass through end to end
                server_header=None,
                create_connection=LBServerConnection,
                select_subprotocol=select_subprotocol,
                origins=origins_option(self.config.allowed_origins),
                ssl=self._server_ssl,
            )
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            raise WsopError(
                f"cannot listen on {where}: port {self.config.port} is in use or not "
                f"bindable ({exc.strerror or exc})"
            ) from None
        watcher = MembershipWatcher(self.config.source, self._placement, self._adopt, log)
        self._watcher = asyncio.ensure_future(watcher.run())
        sockets = self.server.sockets
        return sockets[0].getsockname()[1] if sockets else self.config.port

    def reload(self) -> None:
        """SIGHUP: re-read the certificate files (a rotated certificate is served to new
        clients from now on; connected ones keep their session)."""
        tls = self.config.tls
        if self._server_ssl is not None and tls.certfile and tls.keyfile:
            reload_certificates(self._server_ssl, tls.certfile, tls.keyfile)
            log.info("reloaded the TLS certificate %s", tls.certfile)

    def banner(self, port: int) -> str:
        cfg = self.config
        return (
            f"wsop lb {cfg.name} listening on {'wss' if cfg.tls.serving else 'ws'}://"
            f"{cfg.host}:{port}{WS_PATH} "
            f"({len(self.members)} sidecars, algo {cfg.algo})"
        )

    async def stop(self) -> None:
        """Graceful stop: refuse new clients, close relays with 1012 over `drain_s`."""
        self._stopping = True
        self._watcher.cancel()
        assert self.server is not None
        self.server.close(close_connections=False)
        relays = list(self.relays)
        loop = asyncio.get_running_loop()
        window = self.config.drain_s
        for i, relay in enumerate(relays):
            loop.call_later(window * i / len(relays), relay.shutdown)
        try:
            async with asyncio.timeout(window + 10):
                await asyncio.gather(*(relay.wait() for relay in relays))
                await self.server.wait_closed()
        except TimeoutError:
            log.warning("some connections did not close in time")
        if self.trunks is not None:
            self.trunks.close()


def run(config: LBConfig) -> None:
    """Blocking entry point: serve until SIGTERM/SIGINT (`wsop.shell.run`)."""
    shell.run(lambda: LoadBalancer(config))
