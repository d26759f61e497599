"""Client messages: parse, authorise, plan and dispatch — and the ack that answers them.

Per client frame (a session's, or the upstream app's in upstream mode): parse (pure),
decide (router, pure), one Redis round trip for team messages (the only await), then
the delivery (`wsop.sidecar.delivery`). A huge team is planned and sent in slices of
`TEAM_SLICE_USERS`, yielding to the event loop between them; a sender whose messages
feed a congested peer link waits (its session's reading pauses behind it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Final

import redis

from wsop import protocol
from wsop.auth import Identity
from wsop.errors import NotFound
from wsop.names import IdMode
from wsop.quotas import Quotas
from wsop.sidecar.acks import PendingAck
from wsop.sidecar.delivery import Delivery
from wsop.sidecar.metrics import SidecarMetrics
from wsop.sidecar.outbox import Outbox
from wsop.sidecar.peer_codec import TO_OWNER
from wsop.sidecar.peers import PeerLink
from wsop.sidecar.presence import Presence
from wsop.sidecar.router import Router

TEAM_SLICE_USERS: Final = 4096
"""A team message is planned and sent this many recipients at a time, yielding to the
event loop in between: a 1M-recipient team must not stall every other tenant here."""


class ClientMessages:
    """Routes the messages clients send to one sidecar."""

    def __init__(
        self,
        max_frame_bytes: int,
        quotas: Quotas,
        router: Router,
        delivery: Delivery,
        presence: Presence,
        outbox: Outbox,
        metrics: SidecarMetrics,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.quotas = quotas
        self.router = router
        self.delivery = delivery
        self.peers = delivery.peers
        self.presence = presence
        self.outbox = outbox
        self.metrics = metrics

    def route(
        self, conn: Any, ident: Identity, index: int, raw: str | bytes
    ) -> Coroutine[Any, Any, None] | None:
        """Handle one frame from a client (a session, or the app in upstream mode) at
        once; a team message returns the coroutine that resolves it in Redis."""
        started = time.perf_counter()
        try:
            # a canonical id's type is its tenant's id mode: `to` is read the same way
            msg = protocol.parse_client_frame(raw, self.max_frame_bytes, IdMode.of(ident.user))
        except protocol.ProtocolError as exc:
            self.metrics.errors.labels(exc.code).inc()
            self.outbox.send((conn,), exc.to_frame())
            return None
        self.metrics.tenant_messages(ident.tenant).inc()
        bucket = getattr(conn, "bucket", None)
        if bucket is not None and not bucket.take(time.monotonic()):
            self.metrics.rate_limited.labels(self.metrics.tenant_label(ident.tenant)).inc()
            limit = self.quotas.of(ident.tenant).messages_per_second
            self._error(conn, msg.id, protocol.RATE_LIMITED, f"over {limit:g} messages/s")
            return None
        if isinstance(msg, protocol.TeamMessage):
            return self._team(conn, ident, index, msg, started)
        if type(msg.to) is int and msg.to >= self.presence.acl.max_users:
            # no user of the tenant can have it (as at the handshake: docs/protocol.md)
            why = f"no user id ≥ {self.presence.acl.max_users} (max_users)"
            self._error(conn, msg.id, protocol.BAD_REQUEST, why)
            return None
        self.metrics.in_direct.inc()
        frame = protocol.encode_message(ident.user, msg.data, msg.id, int(time.time() * 1000))
        pending = PendingAck(conn, msg.id, started, done=self._done)
        return self.send(ident.tenant, [msg.to], frame, pending)

    async def _team(
        self, conn: Any, ident: Identity, index: int, msg: protocol.TeamMessage, started: float
    ) -> None:
        self.metrics.in_team.inc()
        try:
            users, forbidden = await self.presence.team_recipients(ident.tenant, msg.teams, index)
        except NotFound as exc:
            self._error(conn, msg.id, protocol.NOT_FOUND, str(exc))
            return
        except redis.RedisError as exc:
            self._error(conn, msg.id, protocol.UNAVAILABLE, f"ACL store: {exc}")
            return
        if users is None:
            self._error(
                conn, msg.id, protocol.FORBIDDEN, f"you are not a member of team {forbidden!r}"
            )
            return
        tenant = ident.tenant
        too_many = self.over_recipient_limit(tenant, len(users))
        if too_many:
            self._error(conn, msg.id, protocol.TOO_MANY_RECIPIENTS, too_many)
            return
        ts = int(time.time() * 1000)
        frame = protocol.encode_message(ident.user, msg.data, msg.id, ts, msg.teams)
        pending = PendingAck(conn, msg.id, started, done=self._done)
        waiting = self.send(tenant, users, frame, pending)
        if waiting is not None:
            await waiting

    def over_recipient_limit(self, tenant: str, count: int) -> str | None:
        """Why a message to `count` online recipients is not sent (`max_recipients`)."""
        limit = self.quotas.of(tenant).max_recipients
        if limit and count > limit:
            return f"{count} online recipients; this stack allows {limit} a message"
        return None

    def send(
        self, tenant: str, users: list[Any], frame: str, pending: PendingAck
    ) -> Coroutine[Any, Any, None] | None:
        """Plan and dispatch `frame` to `users` of `tenant`; `pending` completes when
        every recipient is answered for. The one way a client's message and a backend's
        publish reach their recipients. Returns what the sender must await, if anything:
        a congested peer link's backpressure, or the rest of a huge team's slices."""
        if len(users) <= TEAM_SLICE_USERS:
            plan = self.router.plan(tenant, users)
            forwarded = self.delivery.execute(tenant, plan, frame, pending, TO_OWNER)
            congested = self.peers.congested(forwarded) if forwarded else None
            return _wait_ready(congested) if congested else None
        return self._send_sliced(tenant, users, frame, pending)

    async def _send_sliced(
        self, tenant: str, users: list[Any], frame: str, pending: PendingAck
    ) -> None:
        ack_id = self.delivery.begin(pending)
        try:
            for start in range(0, len(users), TEAM_SLICE_USERS):
                plan = self.router.plan(tenant, users[start : start + TEAM_SLICE_USERS])
                forwarded = self.delivery.dispatch(ack_id, pending, tenant, plan, frame, TO_OWNER)
                await _wait_ready(self.peers.congested(forwarded))
                await asyncio.sleep(0)  # let other clients' messages through
        finally:
            self.delivery.end(ack_id)

    def _error(self, conn: Any, msg_id: str | None, code: str, text: str) -> None:
        self.metrics.errors.labels(code).inc()
        self.outbox.send((conn,), protocol.encode_error(msg_id, code, text))

    def _done(self, pending: PendingAck) -> None:
        self.metrics.ack_latency.observe(time.perf_counter() - pending.started)
        frame = protocol.encode_ack(pending.msg_id, pending.delivered, pending.undelivered)
        assert pending.conn is not None
        self.outbox.send((pending.conn,), frame)


async def _wait_ready(links: list[PeerLink]) -> None:
    """Backpressure: the sender waits (its reading pauses behind it) while a link it fed
    is congested, instead of the link's queue growing without bound."""
    for link in links:
        await link.wait_ready()
