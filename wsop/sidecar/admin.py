"""The sidecar's plain-HTTP side (websockets' `process_request`): the handshake's
authentication, `/healthz`, `/metrics`, `/connections`, the `/move` and `/drain`
hooks, and the backends' APIs (`/publish`, `/presence`: `wsop.sidecar.api`)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import redis
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from wsop import httpapi, lbsignal, protocol
from wsop.acl.live import LiveAcl
from wsop.auth import AuthError, Identity, TokenVerifier, identity_from_request
from wsop.httpadmin import (
    PROMETHEUS_CONTENT_TYPE,
    admin_refusal,
    json_response,
    method_refusal,
    path_of,
    query,
    request_refusal,
    text_response,
)
from wsop.names import IdMode
from wsop.sidecar.api import SidecarApi
from wsop.sidecar.client import ClientHandshake, ClientSession, SidecarServerConnection
from wsop.sidecar.config import SidecarConfig
from wsop.sidecar.metrics import SidecarMetrics
from wsop.sidecar.outbox import Outbox
from wsop.sidecar.presence import Presence
from wsop.sidecar.router import Router
from wsop.sidecar.trunks import SidecarTrunks


class Sidecar(Protocol):
    """What the admin side needs of the sidecar (`wsop.sidecar.app.Sidecar`), declared
    here so that this module depends on that face, not on the server that uses it."""

    config: SidecarConfig
    routing: dict[str, str]
    acl: LiveAcl
    verifier: TokenVerifier
    presence: Presence
    metrics: SidecarMetrics
    router: Router
    outbox: Outbox
    api: SidecarApi
    trunks: SidecarTrunks

    def placement_for(self, members: dict[str, str]) -> Callable[[Any], str]: ...


async def process_request(
    sidecar: Sidecar, conn: SidecarServerConnection, request: Request
) -> Response | None:
    config = sidecar.config
    path = path_of(request)
    if path in httpapi.METHODS:  # JSON answers for everything (wsop.sidecar.api)
        return await sidecar.api.answer(conn, request, path)
    malformed = request_refusal(request)  # duplicate headers: 400, never a 500
    if malformed:
        return text_response(conn, 400, malformed)
    if request.method != "GET":
        return method_refusal(conn, request.method)
    if path == "/ws":
        try:
            ident = identity_from_request(
                request.path, request.headers, sidecar.verifier, config.insecure
            )
        except AuthError as exc:  # 401, or 400 for a malformed Authorization header
            return text_response(conn, exc.http_status, str(exc))
        # Only the LB may say it holds this client, or where it moves from: signed.
        signal = lbsignal.verify(
            config.admin_token,
            request.headers.get(lbsignal.HEADER),
            ident.tenant,
            ident.user,
            time.time(),
        )
        moved_from = signal.moved_from if signal else None
        offsets = httpapi.query_params(request.path).get("since", [])
        if len(offsets) > 1:  # which one did it mean? (like a credential given twice)
            return text_response(conn, 400, "give ?since= at most once")
        # `since` of a moved client is the one it connected with, long replayed: ignored
        since = None if moved_from or not offsets else offsets[0]
        conn.client = ClientHandshake(
            ident, via_lb=signal is not None, moved_from=moved_from, since=since
        )
        return None
    if path == "/healthz":
        members = sorted(sidecar.routing)  # adopted, not merely read
        body = {"status": "ok", "name": config.name, "members": members}
        return json_response(conn, 200, body | {"presence": sidecar.presence.health()})
    refused = admin_refusal(request.headers, config.admin_token)
    if refused:
        return text_response(conn, 401, refused)
    if path == "/peer":
        conn.peer = query(request).get("from", "?")
        return None
    if path == "/trunk":
        if not sidecar.trunks.accepting:
            return text_response(conn, 503, "sidecar stopping")
        conn.trunk = query(request).get("from", "?")[:64]
        return None
    if path == "/metrics":
        return text_response(conn, 200, sidecar.metrics.render().decode(), PROMETHEUS_CONTENT_TYPE)
    if path == "/connections":
        return json_response(conn, 200, connections_report(sidecar))
    if path == "/move":
        return move(sidecar, conn, query(request))
    if path == "/drain":
        return await drain(sidecar, conn, query(request).get("to"))
    return text_response(conn, 404, f"no such endpoint: {path}")


async def admit(
    sidecar: Sidecar, conn: SidecarServerConnection, ident: Identity, index: int
) -> Response | None:
    """Count the connection against its user's and tenant's limits (across every
    sidecar, in Redis), or refuse it with 429. A client the LB is moving here is
    counted but never refused: its old connection closes in a moment."""
    limits = sidecar.config.quotas.of(ident.tenant)
    if not (limits.connections_per_user or limits.connections_per_tenant):
        return None
    assert conn.client is not None
    moving = conn.client.moved_from is not None
    try:
        over = await sidecar.acl.count_connection(
            sidecar.config.name, ident.tenant, index, +1,
            limits.connections_per_user, limits.connections_per_tenant, not moving,
        )  # fmt: skip
    except redis.RedisError as exc:
        return text_response(conn, 503, f"presence store unavailable: {exc}"[:200])
    if over is not None:
        what, count = over
        limit = getattr(limits, f"connections_per_{what}")
        sidecar.metrics.quota_refused.labels(what, sidecar.metrics.tenant_label(ident.tenant)).inc()
        return text_response(conn, 429, f"too many connections for this {what}: {count} of {limit}")
    conn.client.counted = True
    return None


def move(sidecar: Sidecar, conn: ServerConnection, params: dict[str, str]) -> Response:
    """Ask the LB in front of each of the user's connections to move it to `to`.

    The control frame travels on the connection itself, so it reaches exactly the LB
    that holds the client, wherever it is; the LB dials `to`, switches at a message
    boundary, and the new sidecar takes over delivery (see `Router.connect`).
    """
    tenant, raw_user, target = params.get("tenant"), params.get("user"), params.get("to")
    members = dict(sidecar.routing)
    if not tenant or raw_user is None or not target:
        return json_response(conn, 400, {"error": "need tenant, user and to"})
    if target not in members:
        return json_response(conn, 404, {"error": f"no sidecar named {target!r}"})
    conns = movable(held(sidecar, tenant, raw_user))
    if target == sidecar.config.name or not conns:
        return json_response(conn, 200, {"moved": 0})
    sidecar.outbox.send(conns, protocol.move_frame(target, members[target]))
    return json_response(conn, 200, {"moved": len(conns)})


async def drain(sidecar: Sidecar, conn: ServerConnection, to: str | None) -> Response:
    """Move every connection here to its owner on a ring *without* this sidecar (before
    taking it out of service): the same control frame as `/move`, per connection, so
    clients stay connected. `to=a,b` names the ring to drain onto (a scale-down passes
    the sidecars it keeps, so nothing lands on another one being removed); default: all
    other members. Answers what was asked, per target; the moves complete asynchronously
    (watch `/connections` fall to 0)."""
    name = sidecar.config.name
    members = dict(sidecar.routing)
    others = {n: url for n, url in members.items() if n != name}
    if to is not None:
        wanted = [n for n in to.split(",") if n]
        unknown = [n for n in wanted if n not in others]
        if unknown or not wanted:
            return json_response(
                conn, 400, {"error": f"to: not other members of this sidecar: {unknown or to!r}"}
            )
        others = {n: others[n] for n in wanted}
    if not others:
        return json_response(conn, 409, {"error": "no other sidecar to drain to"})
    # a maglev table takes ~0.6 s to build: never on the event loop
    owner = await asyncio.to_thread(sidecar.placement_for, others)
    targets: Counter[str] = Counter()
    unmovable = 0
    for tenant, user, count in sidecar.router.users():
        conns = movable(sidecar.router.connections(tenant, user))
        unmovable += count - len(conns)
        target = owner((tenant, user))
        targets[target] += sidecar.outbox.send(conns, protocol.move_frame(target, others[target]))
    moving = sum(targets.values())
    return json_response(conn, 200, {"moving": moving, "to": dict(targets), "unmovable": unmovable})


def held(sidecar: Sidecar, tenant: str, text: str) -> set[ClientSession]:
    """The connections here of the user whose id is `text` (a query value): exactly that
    user. A tenant's ids are all str or all int (wsop/names.py), so at most one of the
    two keys can hold connections, and "007" never finds user 7."""
    found: set[ClientSession] = set()
    for user in {protocol.normalize_user_id(text, mode) for mode in IdMode}:
        if user is not None:
            found |= sidecar.router.connections(tenant, user)  # type: ignore[arg-type]
    return found


def movable(sessions: Iterable[ClientSession]) -> list[ClientSession]:
    """The sessions an LB holds: only an LB acts on a move frame (a client connected to
    the sidecar directly would just receive it)."""
    return [s for s in sessions if s.via_lb]


def connections_report(sidecar: Sidecar) -> dict[str, Any]:
    users = [{"tenant": t, "user": u, "count": c} for t, u, c in sidecar.router.users()]
    return {
        "name": sidecar.config.name,
        "connections": sidecar.router.connection_count(),
        "users": users,
        "trunks": sidecar.trunks.report(),
    }


async def identify(
    sidecar: Sidecar, conn: ServerConnection, client: ClientHandshake
) -> Response | None:
    """The client's exact identity (wsop/names.py: the tenant's id mode says who this
    is) and its bit index — or the refusal, before the 101."""
    ident = client.identity
    try:
        mode = await sidecar.acl.id_mode(ident.tenant)
        user = protocol.normalize_user_id(ident.user, mode)
        index = None if user is None else await sidecar.acl.bit_index(ident.tenant, user)
    except redis.RedisError as exc:
        return text_response(conn, 503, f"presence store unavailable: {exc}"[:200])
    if user is None:
        why = f"user id {ident.user!r} is not valid in {mode} tenant {ident.tenant!r}"
        return text_response(conn, 403, f"{why}: it must be {mode.rule}")
    if index is None:
        return text_response(conn, 403, "user id not valid for this tenant")
    client.identity = Identity(ident.tenant, user)
    client.index = index
    return None
