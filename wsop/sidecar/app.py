"""The sidecar process: the asyncio layer around `Router`, `LiveAcl` and the peer links.

Per client frame (delivered by a `ClientSession`, synchronously): parse (pure), decide
(router, pure), one Redis round trip for team messages (the only await), then writes
through the outbox. Acks are sent once every owner a message went to has answered,
so `delivered` in the ack is a real count, and anything not delivered is counted in
`wsop_deliveries_failed` and reported in the ack's `undelivered`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any

import redis
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from wsop import protocol
from wsop.acl.live import LiveAcl
from wsop.auth import Identity
from wsop.discovery import MembershipSource
from wsop.errors import UsageError
from wsop.httpadmin import origins_option, select_subprotocol
from wsop.protocol import CloseCode
from wsop.quotas import TokenBucket
from wsop.shell import MembershipWatcher
from wsop.sidecar import admin
from wsop.sidecar.api import SidecarApi
from wsop.sidecar.client import (
    ClientHandshake,
    ClientSession,
    LbControl,
    SidecarServerConnection,
)
from wsop.sidecar.config import SidecarConfig
from wsop.sidecar.delivery import ACK_TIMEOUT_S, Delivery
from wsop.sidecar.history_service import SidecarHistory
from wsop.sidecar.messages import ClientMessages
from wsop.sidecar.metrics import SidecarMetrics
from wsop.sidecar.outbox import Outbox
from wsop.sidecar.peer_codec import Holding, PeerDecoder, PeerFormatError
from wsop.sidecar.peers import PEER_MAX_FRAME_BYTES
from wsop.sidecar.presence import Presence
from wsop.sidecar.router import Owner, Router, placement
from wsop.sidecar.trunks import SidecarTrunks
from wsop.sidecar.upstream import UpstreamApps
from wsop.tls import reload as reload_certificates
from wsop.trunk.metrics import TrunkCollector

log = logging.getLogger("wsop.sidecar")

PRESENCE_RETRIES = 5
PING_INTERVAL_S = 30.0
MOVE_QUIET_S = 0.5
"""After the LB says a client moved away, its old connection stays open at least this
long (deliveries already on their way), and until its open acks are answered."""


class Sidecar:
    def __init__(self, config: SidecarConfig, acl: LiveAcl, members: MembershipSource) -> None:
        self.config = config
        self.verifier = config.token_verifier()
        self.acl = acl
        self.members = members
        self.metrics = SidecarMetrics(config.name)
        self.routing = members.current()
        """The membership the router routes over (`/healthz`): a new one counts only
        once its placement is built and adopted, which takes a moment after it is read."""
        self.router = Router(config.name, self.placement_for(self.routing))
        self.outbox = Outbox()
        self.slow_client_s = config.slow_client_s
        self._server_ssl = config.tls.server_context()
        self.delivery = Delivery(
            config.name, config.admin_token, self.router, self.outbox, self.metrics, self._spawn,
            config.tls.client_context(),
        )  # fmt: skip
        self.peers = self.delivery.peers
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._sessions: set[ClientSession] = set()
        self._peer_conns: set[ServerConnection] = set()
        self.trunks = SidecarTrunks()
        self.metrics.registry.register(TrunkCollector(self.trunks.stats, "wsop"))
        self.presence = Presence(
            config.name, acl, config.timings, lambda: self.routing.keys(),
            lambda: self._sessions, self.metrics.registry,
        )  # fmt: skip
        self.history = SidecarHistory(
            config, acl, self.router, self.delivery, self.presence, self.outbox, self.metrics,
            self._spawn,
        )  # fmt: skip
        self.messages = ClientMessages(
            config.max_frame_bytes, config.quotas, self.router, self.delivery, self.presence,
            self.outbox, self.metrics,
        )  # fmt: skip
        self.api = SidecarApi(
            config.max_frame_bytes, config.admin_token, self.verifier, config.quotas, acl,
            self.presence, self.messages, self.metrics,
        )  # fmt: skip
        self.apps = (
            UpstreamApps(
                config.upstream,
                config.max_frame_bytes,
                self.messages.route,
                self._spawn,
                self.metrics.failed.labels("app_unavailable").inc,
            )  # fmt: skip
            if config.upstream
            else None
        )

    @classmethod
    def create(cls, config: SidecarConfig, redis_url: str, members: MembershipSource) -> Sidecar:
        """A sidecar on the Redis at `redis_url` (its async client, its ACL adapter)."""
        from wsop.backend import connect_async

        return cls(config, LiveAcl(connect_async(redis_url)), members)

    def placement_for(self, members: dict[str, str]) -> Owner:
        return placement(self.config.algo, members, self.config.name)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> int:
        if not self.config.admin_token:  # closed by default (cli.credentials)
            raise UsageError("a sidecar needs an admin token: it authenticates its peer links")
        # A previous run of this sidecar may have crashed with users marked online.
        released = await self.acl.release(self.config.name)
        if released:
            log.info("released stale presence in %d tenant(s)", released)
        await self.presence.start()  # lease, epoch; reaps dead sidecars every heartbeat
        await self.peers.update(self.routing)
        options: dict[str, Any] = dict(  # a TCP connection's and a trunk channel's
            max_size=PEER_MAX_FRAME_BYTES,  # peers' limit; clients get theirs at the handshake
            compression=None, ping_interval=30, close_timeout=2,
            select_subprotocol=select_subprotocol,
            origins=origins_option(self.config.allowed_origins),
        )  # fmt: skip
        self._server = await serve(
            self._handler, self.config.host, self.config.port,
            process_request=self._process_request, process_response=self._process_response,
            create_connection=SidecarServerConnection, ssl=self._server_ssl, **options,
        )  # fmt: skip
        self.trunks.bind(self._server, **options)
        watcher = MembershipWatcher(self.members, self.placement_for, self._adopt, log)
        self._tasks.append(asyncio.create_task(watcher.run()))
        self._tasks.append(asyncio.create_task(self.delivery.expire_acks()))
        self._tasks.append(asyncio.create_task(self._keepalive()))
        self._tasks += [asyncio.create_task(task) for task in self.history.tasks()]
        return self._server.sockets[0].getsockname()[1]

    async def _adopt(self, members: dict[str, str], placement: Any) -> None:
        """A new membership (its placement built off the loop by the watcher)."""
        self.delivery.membership_changed()
        changes = self.router.set_owner(placement)
        self.routing = dict(members)
        await self.peers.update(members)
        self.history.adopted(placement)  # (in-memory logs of users owned elsewhere now)
        for change in changes:
            self.peers.send(change.owner, Holding(change.tenant, change.user, change.holding))
        log.info("membership now %s (%d registrations sent)", sorted(members), len(changes))

    def banner(self, port: int) -> str:
        return f"{self.config.name} listening on port {port}"

    def reload(self) -> None:
        """SIGHUP: re-read the certificate files (new connections get the new one)."""
        tls = self.config.tls
        if self._server_ssl is not None and tls.certfile and tls.keyfile:
            reload_certificates(self._server_ssl, tls.certfile, tls.keyfile)
            log.info("reloaded the TLS certificate %s", tls.certfile)

    async def stop(self) -> None:
        """Stop accepting, close clients with 1012 spread over the window, clear presence."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        self.trunks.accepting = False
        clients = list(self._sessions)
        pause = self.config.close_window_s / max(1, len(clients))
        for session in clients:
            session.close(CloseCode.SERVICE_RESTART, "service restart")
            if pause:
                await asyncio.sleep(pause * random.uniform(0.5, 1.5))
        # presence is cleared as the connections close; give them a moment
        for _ in range(100):
            if not self._sessions:
                break
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        await self.presence.stop()
        await self.history.leaving(self.routing, self.placement_for)
        try:
            await self.acl.release(self.config.name)  # whatever a failed clear left behind
            await self.presence.drop()
        except redis.RedisError as exc:
            log.warning("could not release presence on shutdown: %s", exc)
        await self.peers.close()
        self.trunks.close()
        for conn in list(self._peer_conns):
            conn.transport.abort()  # internal links: no close handshake with a dying peer
        self._server.close(close_connections=True)
        try:
            await asyncio.wait_for(self._server.wait_closed(), 3)
        except TimeoutError:
            log.warning("some connections did not close in time")

    # -- HTTP and handshake (wsop/sidecar/admin.py) ---------------------------------------

    async def _process_request(
        self, conn: SidecarServerConnection, request: Request
    ) -> Response | None:
        """Admin endpoints and authentication, then — for a client — the user's bit index.

        The user is checked here, before the 101, so that a sidecar that cannot take a
        client refuses the *handshake*: an LB moving a live client sees the refusal and
        keeps it where it was, instead of switching to a connection that closes at once.
        """
        response = await admin.process_request(self, conn, request)
        client = conn.client
        if response is not None or client is None:
            return response
        refusal = await admin.identify(self, conn, client)
        if refusal is not None:
            return refusal
        conn.protocol.max_message_size = self.config.max_frame_bytes
        return None

    async def _process_response(
        self, conn: SidecarServerConnection, request: Request, response: Response
    ) -> Response | None:
        """A client's connection is counted against its quotas only now, once the
        handshake succeeds (a 101: origin and subprotocol were checked after
        `process_request`), so a refused handshake never leaves a count behind."""
        client = conn.client
        if response.status_code != 101 or client is None or client.index is None:
            return None
        return await admin.admit(self, conn, client.identity, client.index)

    def connections_report(self) -> dict[str, Any]:
        return admin.connections_report(self)

    async def _handler(self, conn: SidecarServerConnection) -> None:
        if conn.peer is not None:
            await self._peer_handler(conn, conn.peer)
        elif conn.client is not None:
            await self._client_handler(conn, conn.client)
        elif conn.trunk is not None:
            self.trunks.take(conn, conn.trunk)

    # -- clients -----------------------------------------------------------------------

    async def _client_handler(self, conn: SidecarServerConnection, client: ClientHandshake) -> None:
        """Register the client, then hand its socket to a `ClientSession` and return: from
        here on the connection costs callbacks only, no task."""
        ident, index = client.identity, client.index
        assert index is not None  # (the handshake refused users without one)
        app = await self.apps.open(ident, index) if self.apps is not None else None
        session = ClientSession(conn.protocol, ident, index, self, client.via_lb)
        session.counted = client.counted
        rate = self.config.quotas.of(ident.tenant).messages_per_second
        if rate:
            session.bucket = TokenBucket(rate, 2 * rate, time.monotonic())
        # Registered first, so deliveries queue in the session while presence is set;
        # the client's own frames wait in the stash until then (a team message must
        # see its sender online).
        first, change = self.router.connect(ident.tenant, ident.user, session, client.moved_from)
        if client.since is not None:  # (then, at once: its live frames wait for the replay)
            self.history.recovery.start(session, client.since)
        self._sessions.add(session)
        if app is not None and self.apps is not None:
            self.apps.attach(session, app)
        self.metrics.connections.inc()
        if change:
            self.peers.send(
                change.owner, Holding(change.tenant, change.user, True, change.replaces)
            )
        if first:
            try:
                await self.acl.presence(self.config.name, ident.tenant, index, +1)
            except redis.RedisError as exc:
                self.client_gone(session)
                await conn.close(
                    CloseCode.INTERNAL_ERROR,
                    protocol.close_reason(f"presence store unavailable: {exc}"),
                )
                return
        if conn.lost:  # it left while its presence was written: nothing of it can be run
            self.client_gone(session)  # (websockets' parser saw the EOF already)
            return
        conn.attach(session)
        session.send_data()  # deliveries that arrived meanwhile
        conn.replay()  # then the client's frames, in order (may end the session)

    def client_gone(self, session: ClientSession) -> None:
        self._sessions.discard(session)
        self.metrics.connections.dec()
        if self.apps is not None:
            self.apps.gone(session)
        ident = session.ident
        if session.counted:
            session.counted = False
            self._spawn(self._uncount(ident, session.index))
        last, change = self.router.disconnect(ident.tenant, ident.user, session)
        if change:
            self.peers.send(change.owner, Holding(change.tenant, change.user, False))
        if last:
            self._spawn(self._clear_presence(ident, session.index))

    def client_too_slow(self, session: ClientSession) -> None:
        self.metrics.slow_clients.inc()
        log.warning(
            "closing %s/%s: not reading its messages", session.ident.tenant, session.ident.user
        )

    def client_frame(
        self, session: ClientSession, data: str | bytes
    ) -> Coroutine[Any, Any, None] | None:
        """A client's message (`str` from a text frame, mirrored to an app as text)."""
        if type(data) is LbControl:  # (JSON never starts with NUL; a client's is refused)
            return self._control(session, data)
        app = self.apps.get(session) if self.apps is not None else None
        if app is not None:
            return self.apps.mirror_then_route(app, session, data)
        return self.messages.route(session, session.ident, session.index, data)

    def _control(self, session: ClientSession, data: LbControl) -> None:
        """A control frame from the LB in front of `session` (today: it moved away)."""
        if data == protocol.MOVED_FRAME:
            self._spawn(self._close_when_settled(session))
        else:
            log.warning("ignoring control frame %r", data[:40])

    async def _close_when_settled(self, session: ClientSession) -> None:
        """Close a connection whose client moved to another sidecar once nothing is owed
        to it: `MOVE_QUIET_S` for deliveries already on their way here, then every open
        ack of its messages (each answered on this connection, which the LB still
        relays). A delivery that arrives after the close is reported undelivered."""
        await asyncio.sleep(MOVE_QUIET_S)
        deadline = time.monotonic() + ACK_TIMEOUT_S + 1
        while self.delivery.acks.waiting_on(session) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        session.close(CloseCode.NORMAL, "moved")

    async def _keepalive(self) -> None:
        """Ping every client each interval; one that sent nothing since the last ping is
        dead (a half-open TCP connection would otherwise hold presence forever)."""
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            for session in list(self._sessions):
                if session.pong_due and not session.reading_paused:
                    session.abort()
                else:
                    session.ping()

    async def _uncount(self, ident: Identity, index: int) -> None:
        try:
            await self.acl.count_connection(self.config.name, ident.tenant, index, -1)
        except redis.RedisError as exc:  # the count heals when this sidecar is released
            log.warning("uncounting a connection of %s/%s: %s", ident.tenant, ident.user, exc)

    async def _clear_presence(self, ident: Identity, index: int) -> None:
        """Clear the user's presence here, retrying: a missed clear would keep the user
        "online" (and counted as a recipient) until this sidecar restarts."""
        for attempt in range(PRESENCE_RETRIES):
            try:
                await self.acl.presence(self.config.name, ident.tenant, index, -1)
                return
            except redis.RedisError as exc:
                log.warning("clearing presence of %s/%s: %s", ident.tenant, ident.user, exc)
                await asyncio.sleep(0.2 * (attempt + 1))
        self.metrics.failed.labels("presence_clear").inc()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    # -- peers -------------------------------------------------------------------------

    async def _peer_handler(self, conn: ServerConnection, peer: str) -> None:
        self._peer_conns.add(conn)
        decoder = PeerDecoder()  # one per connection: a frame in pieces spans batches
        try:
            async for raw in conn:
                try:
                    items = decoder.feed(raw)
                except PeerFormatError as exc:
                    log.warning("bad batch from peer %s: %s", peer, exc)
                    await conn.close(CloseCode.PROTOCOL_ERROR, "malformed peer batch")
                    return
                for item in items:
                    self.delivery.on_peer_item(peer, item)
        except ConnectionClosed:
            pass
        finally:
            self._peer_conns.discard(conn)
