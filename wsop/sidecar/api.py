"""The sidecar's HTTP APIs for backends: `POST /publish` routed like a client's message
(resolution, peer links, acks — `ClientMessages.send`), and `GET /presence`,
`GET /presence/count` read from Redis. The requests and answers are `wsop.httpapi`'s;
docs/protocol.md is the contract.

A publish is answered with its ack once every recipient is answered for, within
`PUBLISH_WAIT_S`: websockets bounds a whole HTTP exchange by its 10 s open timeout,
so past that wait every recipient not yet confirmed is reported undelivered (the rule
of the ack timeout, sooner), never an answer that never comes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Final

import redis
from websockets.http11 import Request, Response

from wsop import httpapi, protocol
from wsop.acl.live import LiveAcl
from wsop.auth import TokenVerifier
from wsop.errors import NotFound
from wsop.httpapi import ApiError
from wsop.names import IdMode
from wsop.protocol import DirectMessage, TeamMessage
from wsop.publisher import Publisher
from wsop.quotas import Quotas, TokenBucket
from wsop.sidecar.acks import PendingAck
from wsop.sidecar.client import SidecarServerConnection
from wsop.sidecar.messages import ClientMessages
from wsop.sidecar.metrics import SidecarMetrics
from wsop.sidecar.presence import Presence

log = logging.getLogger("wsop.sidecar.api")

PUBLISH_WAIT_S: Final = 8.0
"""A publish's ack is awaited this long at most (under websockets' 10 s open timeout)."""
MAX_PUBLISHERS: Final = 10_000
"""Rate buckets kept, one per publisher (tenant, sender); the least recently used go."""


class SidecarApi:
    """Answers the API paths of one sidecar."""

    def __init__(
        self,
        max_frame_bytes: int,
        admin_token: str | None,
        verifier: TokenVerifier | None,
        quotas: Quotas,
        acl: LiveAcl,
        presence: Presence,
        messages: ClientMessages,
        metrics: SidecarMetrics,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.admin_token = admin_token
        self.verifier = verifier
        self.quotas = quotas
        self.acl = acl
        self.presence = presence
        self.messages = messages
        self.metrics = metrics
        self._buckets: OrderedDict[tuple[str, bool, Any], TokenBucket] = OrderedDict()

    async def answer(self, conn: SidecarServerConnection, request: Request, path: str) -> Response:
        """One API request's JSON answer; every failure is a JSON error, never a 500
        with a traceback (an unexpected one is logged here, answered `internal`)."""
        try:
            httpapi.check_method(path, request.method)
            if path == httpapi.PUBLISH_PATH:
                payload = await self.publish(conn, request)
                self.metrics.publishes.labels("ack").inc()
            elif path == httpapi.PRESENCE_COUNT_PATH:
                payload = await self.presence_count(request)
            else:
                payload = await self.presence_of(conn, request)
            return httpapi.respond(conn, 200, payload)
        except ApiError as err:
            failure = err
        except redis.RedisError as exc:
            failure = ApiError(protocol.UNAVAILABLE, f"presence store unavailable: {exc}"[:200])
        except Exception:
            log.exception("%s %s failed", request.method, path)
            failure = ApiError(protocol.INTERNAL, "internal error (see the sidecar's log)")
        if path == httpapi.PUBLISH_PATH:
            self.metrics.publishes.labels(failure.code).inc()
        return httpapi.refuse(conn, failure)

    # -- POST /publish -----------------------------------------------------------------

    async def publish(self, conn: SidecarServerConnection, request: Request) -> dict[str, Any]:
        publisher = self._publisher(request)
        httpapi.check_json_body(request.headers)
        body = httpapi.parse_publish(
            await httpapi.read_body(conn, self.max_frame_bytes), self.max_frame_bytes
        )
        tenant = body.tenant
        httpapi.check_tenant(publisher, tenant)
        if not self._take(tenant, publisher):
            rate = self.quotas.of(tenant).publishes_per_second
            self.metrics.rate_limited.labels(self.metrics.tenant_label(tenant)).inc()
            raise ApiError(protocol.RATE_LIMITED, f"over {rate:g} publishes/s", body.id)
        msg = body.message(await self.acl.id_mode(tenant))
        self.metrics.tenant_messages(tenant).inc()
        delivered, undelivered = await self._send(tenant, publisher.sender, msg)
        return httpapi.ack_payload(msg.id, delivered, undelivered)

    def _take(self, tenant: str, publisher: Publisher) -> bool:
        rate = self.quotas.of(tenant).publishes_per_second
        if not rate:
            return True
        key = (tenant, publisher.tenant is None, publisher.sender)
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate, 2 * rate, now)
            if len(self._buckets) > MAX_PUBLISHERS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    async def _send(
        self, tenant: str, sender: Any, msg: DirectMessage | TeamMessage
    ) -> tuple[int, int]:
        """Route `msg` as a client's message from `sender` would be, without the sender's
        membership check (the backend is trusted within its tenant); (delivered,
        undelivered) once every recipient is answered for, or at `PUBLISH_WAIT_S`."""
        started = time.perf_counter()
        answered = asyncio.get_running_loop().create_future()

        def done(_: PendingAck) -> None:
            if not answered.done():
                answered.set_result(None)

        pending = PendingAck(None, msg.id, started, done=done)
        ts = int(time.time() * 1000)
        if isinstance(msg, DirectMessage):
            self.metrics.in_direct.inc()
            recipients = [msg.to]
            frame = protocol.encode_message(sender, msg.data, msg.id, ts)
        else:
            self.metrics.in_team.inc()
            recipients = await self._team_recipients(tenant, msg)
            frame = protocol.encode_message(sender, msg.data, msg.id, ts, msg.teams)

        async def deliver() -> None:
            waiting = self.messages.send(tenant, recipients, frame, pending)
            if waiting is not None:
                await waiting
            await answered

        try:
            await asyncio.wait_for(deliver(), PUBLISH_WAIT_S)
        except TimeoutError:  # every recipient not confirmed by now is undelivered
            self.metrics.failed.labels("publish_timeout").inc(len(recipients) - pending.delivered)
            return pending.delivered, len(recipients) - pending.delivered
        return pending.delivered, pending.undelivered

    async def _team_recipients(self, tenant: str, msg: TeamMessage) -> list[Any]:
        try:
            users, _ = await self.presence.team_recipients(tenant, msg.teams, None)
        except NotFound as exc:
            raise ApiError(protocol.NOT_FOUND, str(exc), msg.id) from None
        assert users is not None  # (no sender: no membership to fail)
        too_many = self.messages.over_recipient_limit(tenant, len(users))
        if too_many:
            raise ApiError(protocol.TOO_MANY_RECIPIENTS, too_many, msg.id)
        return users

    # -- GET /presence, /presence/count --------------------------------------------------

    async def presence_of(self, conn: SidecarServerConnection, request: Request) -> dict[str, Any]:
        publisher = self._publisher(request)
        body = None
        if request.method == "POST":
            httpapi.check_json_body(request.headers)
            body = await httpapi.read_body(conn, httpapi.MAX_PRESENCE_BODY)
        query = httpapi.parse_presence(request.path, body)
        tenant = query.tenant
        httpapi.check_tenant(publisher, tenant)
        mode = await self.acl.id_mode(tenant)
        users = list(dict.fromkeys(_canonical(u, mode, tenant) for u in query.users))
        found = await self.acl.presence_of(tenant, users)
        return {
            "tenant": tenant,
            "users": [p.to_json() for p in found],
            "online": sum(p.online for p in found),
        }

    async def presence_count(self, request: Request) -> dict[str, Any]:
        publisher = self._publisher(request)
        tenant = httpapi.presence_tenant(request.path)
        httpapi.check_tenant(publisher, tenant)
        return {"tenant": tenant, "count": await self.acl.online_count(tenant)}

    def _publisher(self, request: Request) -> Publisher:
        return httpapi.authorize(request.headers, self.verifier, self.admin_token)


def _canonical(user: Any, mode: IdMode, tenant: str) -> Any:
    canonical = protocol.normalize_user_id(user, mode)
    if canonical is None:
        raise ApiError(
            protocol.BAD_REQUEST,
            f"user id {user!r} is not valid in {mode} tenant {tenant!r}: it must be {mode.rule}",
        )
    return canonical
