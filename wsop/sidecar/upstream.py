"""Upstream app mode (the seed's sidecar pattern): each client is mirrored to the app
container next to the sidecar, and frames the app sends are routed as the user's own —
same protocol, same ACL — with their acks and errors going back to the app."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
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
