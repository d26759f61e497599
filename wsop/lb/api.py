"""The LB's side of the backends' APIs (`POST /publish`, `GET /presence`,
`GET /presence/count`): check the credential, pick a sidecar, forward, relay its answer.

The LB stays thin: it refuses what it can see is wrong before any sidecar is bothered
(no or a bad credential, another tenant, a malformed or oversized body: the same JSON
errors `wsop.httpapi` gives everywhere), and otherwise forwards the request as it came
(the caller's own credential, which the sidecar checks again: sidecars never take the
LB's word for who publishes) to

- a direct publish: the ring owner of the recipient, which delivers it without a hop;
- a team publish: the ring owner of the publisher (`publisher_key`), so one publisher's
  team messages meet one sidecar's rate limit, and different publishers spread;
- a presence query: the ring owner of the tenant's first named user, or of the tenant.

A sidecar that cannot be reached (nothing sent) is replaced by the next one on the
ring's order of preference, up to `ATTEMPTS`; one that took the request but did not
answer is not retried (the message may have gone out): 503 `unavailable` says so.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any, Final, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from wsop import httpapi, httpclient, protocol
from wsop.auth import TokenVerifier
from wsop.discovery import Members
from wsop.httpadmin import text_response
from wsop.httpapi import ApiError
from wsop.httpbody import BodyReading
from wsop.lb.stats import LBStats
from wsop.protocol import DirectMessage
from wsop.publisher import Publisher
from wsop.ring.base import Placement

log = logging.getLogger("wsop.lb.api")

ATTEMPTS: Final = 3
FORWARD_TIMEOUT_S: Final = 9.5
"""A sidecar answers a publish within its 8 s wait; all of it under the 10 s websockets
gives an HTTP exchange with the LB."""
FORWARDED_HEADERS: Final = ("Authorization", "X-Wsop-Admin-Token", "Content-Type")


class Balancer(Protocol):
    """What the API side needs of the LB (`wsop.lb.server.LoadBalancer`)."""

    placement: Placement | None
    members: Members
    verifier: TokenVerifier | None
    stats: LBStats
    config: Any  # LBConfig: its admin_token


def publisher_key(publisher: Publisher) -> str:
    """Where a publisher's team messages go: a placement key no user id can equal
    (user ids are printable; this starts with a control character)."""
    who = "admin" if publisher.tenant is None else f"sub:{publisher.sender}"
    return f"\x00publish:{who}"


class LBApi:
    def __init__(
        self, lb: Balancer, max_body_bytes: int, client_ssl: ssl.SSLContext | None
    ) -> None:
        self.lb = lb
        self.verifier = lb.verifier
        self.admin_token = lb.config.admin_token
        self.stats = lb.stats
        self.max_body_bytes = max_body_bytes
        self.client_ssl = client_ssl

    def candidates(self, key: tuple[str, Any]) -> list[tuple[str, str]]:
        """The sidecars to try for `key`, (name, url): its ring owner, then the others."""
        placement, members = self.lb.placement, self.lb.members
        if placement is None:
            return []
        owner = placement.owner(key)
        others = [(n, u) for n, u in sorted(members.items()) if n != owner]
        return [(owner, members[owner]), *others]

    async def answer(self, conn: ServerConnection, request: Request, path: str) -> Response:
        try:
            httpapi.check_method(path, request.method)
            publisher = httpapi.authorize(request.headers, self.verifier, self.admin_token)
            assert isinstance(conn, BodyReading)
            if path == httpapi.PUBLISH_PATH:
                body, key = await self._publish(conn, request, publisher)
            elif path == httpapi.PRESENCE_COUNT_PATH:
                tenant = httpapi.presence_tenant(request.path)
                httpapi.check_tenant(publisher, tenant)
                body, key = b"", (tenant, "")
            else:
                body, key = await self._presence(conn, request, publisher)
            answer = await self._forward(request, body, key)
        except ApiError as err:
            self.stats.api[f"refused_{err.code}"] += 1
            return httpapi.refuse(conn, err)
        self.stats.api["forwarded"] += 1
        # the sidecar's JSON, as it is (ASCII: our encoders escape everything else)
        text = answer.body.decode("utf-8", "replace")
        response = text_response(conn, answer.status, text, answer.headers.get("content-type"))
        if "allow" in answer.headers:
            response.headers["Allow"] = answer.headers["allow"]
        return response

    async def _publish(
        self, conn: BodyReading, request: Request, publisher: Publisher
    ) -> tuple[bytes, tuple[str, Any]]:
        httpapi.check_json_body(request.headers)
        body = await httpapi.read_body(conn, self.max_body_bytes)
        parsed = httpapi.parse_publish(body, self.max_body_bytes)
        httpapi.check_tenant(publisher, parsed.tenant)
        message = parsed.message()  # read without the tenant's id mode: routed by text
        if isinstance(message, DirectMessage):
            return body, (parsed.tenant, message.to)
        return body, (parsed.tenant, publisher_key(publisher))

    async def _presence(
        self, conn: BodyReading, request: Request, publisher: Publisher
    ) -> tuple[bytes, tuple[str, Any]]:
        if request.method != "POST":
            query = httpapi.parse_presence(request.path)
            httpapi.check_tenant(publisher, query.tenant)
            return b"", (query.tenant, query.users[0])
        httpapi.check_json_body(request.headers)
        body = await httpapi.read_body(conn, httpapi.MAX_PRESENCE_BODY)
        query = httpapi.parse_presence(request.path, body)
        httpapi.check_tenant(publisher, query.tenant)
        return body, (query.tenant, query.users[0])

    async def _forward(
        self, request: Request, body: bytes, key: tuple[str, Any]
    ) -> httpclient.Answer:
        headers = {h: v for h in FORWARDED_HEADERS if (v := request.headers.get(h)) is not None}
        tried: list[str] = []
        for name, url in self.candidates(key)[:ATTEMPTS]:
            try:
                return await httpclient.request(
                    url, request.method, request.path, headers, body,
                    FORWARD_TIMEOUT_S, self.client_ssl,
                )  # fmt: skip
            except httpclient.NotSent as exc:
                self.stats.upstream_failures["api_connect"] += 1
                log.warning("cannot reach sidecar %s for %s: %s", name, request.path, exc)
                tried.append(name)
            except httpclient.NoAnswer as exc:
                self.stats.upstream_failures["api_no_answer"] += 1
                raise ApiError(
                    protocol.UNAVAILABLE,
                    f"sidecar {name} took the request but did not answer ({exc}); "
                    "a publish may or may not have been delivered",
                ) from None
        if not tried:
            raise ApiError(protocol.UNAVAILABLE, "no sidecars available; try again later")
        raise ApiError(
            protocol.UNAVAILABLE, f"no sidecar reachable (tried {', '.join(tried)}); try again"
        )
