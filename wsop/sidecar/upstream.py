"""Upstream app mode (the seed's sidecar pattern): each client is mirrored to the app
container next to the sidecar, and frames the app sends are routed as the user's own —
same protocol, same ACL — with their acks and errors going back to the app."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from wsop.auth import Identity

log = logging.getLogger("wsop.sidecar")

FrameHandler = Callable[[ClientConnection, str | bytes], Awaitable[None]]


async def open_app(upstream: str, ident: Identity, max_frame_bytes: int) -> ClientConnection | None:
    """Dial the app for this client (identity in the query and headers); None if it is down."""
    params = urlencode({"tenant": ident.tenant, "user": str(ident.user)})
    try:
        return await connect(
            f"{upstream}?{params}",
            additional_headers={"X-Wsop-Tenant": ident.tenant, "X-Wsop-User": str(ident.user)},
            open_timeout=2,
            compression=None,
            max_size=max_frame_bytes,
        )
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        log.warning("upstream app %s unavailable: %s", upstream, exc)
        return None


async def pump_from_app(app: ClientConnection, on_frame: FrameHandler) -> None:
    """Route every frame the app sends, until it closes."""
    try:
        async for raw in app:
            await on_frame(app, raw)
    except ConnectionClosed:
        pass


async def mirror(app: ClientConnection, raw: str | bytes) -> bool:
    """Copy a client frame to the app; False when the app has gone."""
    try:
        await app.send(raw)
    except ConnectionClosed:
        return False
    return True


class UpstreamApps:
    """The app connections of one sidecar's clients (upstream app mode), by session."""

    def __init__(
        self,
        upstream: str,
        max_frame_bytes: int,
        route: Callable[[Any, Identity, int, str | bytes], Coroutine[Any, Any, None] | None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        on_unavailable: Callable[[], None],
    ) -> None:
        self.upstream = upstream
        self.max_frame_bytes = max_frame_bytes
        self._route = route
        self._spawn = spawn
        self._unavailable = on_unavailable
        self._apps: dict[Hashable, ClientConnection] = {}

    async def open(self, ident: Identity, index: int) -> ClientConnection | None:
        """Dial the app for a client and start routing what it sends as the user's own."""
        app = await open_app(self.upstream, ident, self.max_frame_bytes)
        if app is None:
            self._unavailable()
            return None

        async def routed(conn: ClientConnection, raw: str | bytes) -> None:
            pending = self._route(conn, ident, index, raw)
            if pending is not None:
                await pending

        self._spawn(pump_from_app(app, routed))
        return app

    def attach(self, session: Hashable, app: ClientConnection) -> None:
        self._apps[session] = app

    def get(self, session: Hashable) -> ClientConnection | None:
        return self._apps.get(session) if self._apps else None

    def gone(self, session: Hashable) -> None:
        app = self._apps.pop(session, None)
        if app is not None:
            self._spawn(app.close(1000, "client left"))

    async def mirror_then_route(
        self, app: ClientConnection, session: Any, data: str | bytes
    ) -> None:
        """The client's frame goes to its app, and is routed like any client frame."""
        if not await mirror(app, data):
            self._unavailable()
        pending = self._route(session, session.ident, session.index, data)
        if pending is not None:
            await pending
