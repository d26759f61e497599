"""One client's pipe to the sidecar that owns it, with a seam to move it while it is open.

A `Relay` runs two kinds of pumps: one client→upstream pump, and one upstream→client
pump *per upstream*. The client→upstream pump reads `self.upstream` afresh for every
message, so `switch_to` redirects traffic at a message boundary by swapping one
attribute (no lock on the per-frame path). The old upstream's pump keeps forwarding
what the old sidecar had already sent until its closing handshake ends: that is the
drain. Only the *current* upstream ending ends the relay.

Messages are forwarded as received: a text frame stays a text frame, bytes stay bytes,
nothing is parsed.

Close codes: the client gets the upstream's own close code and reason; an upstream
that vanished without a close frame (crash, kill -9, network) becomes 1012 (service
restart: reconnect, you will be routed to a live sidecar). The upstream gets the
client's code when the client leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from wsop.lb.stats import LBStats

log = logging.getLogger("wsop.lb")

Dial = Callable[[str, str | None], Awaitable[ClientConnection]]
"""Open the upstream WebSocket for this client on a sidecar base url (``ws://h:p``);
the second argument is the sidecar it moves from (sent as ``?moved_from=``), if any."""

CONTROL_MARK: Final = "\x00"
"""Sidecar → LB control frames start with NUL (a JSON frame never does); never forwarded."""
MOVE_PREFIX: Final = "\x00wsop:move "
"""``"\x00wsop:move NAME URL"``: the sidecar asks the LB to switch this client to NAME."""

SERVICE_RESTART: Final = int(CloseCode.SERVICE_RESTART)  # 1012
TRY_AGAIN_LATER: Final = int(CloseCode.TRY_AGAIN_LATER)  # 1013
GOING_AWAY: Final = int(CloseCode.GOING_AWAY)  # 1001
NORMAL: Final = int(CloseCode.NORMAL_CLOSURE)  # 1000
# Codes that describe a close but may never be sent in a close frame (RFC 6455 §7.4.1).
_UNSENDABLE: Final = frozenset({1004, 1005, 1006, 1015})


class RelayClosed(Exception):
    """`switch_to` was called on a relay that has already finished."""


def sendable(code: int | None, fallback: int) -> int:
    """A close code we may put in a frame: `fallback` for none/reserved ones."""
    if code is None or code in _UNSENDABLE or not (1000 <= code <= 4999):
        return fallback
    return code


class Relay:
    """Relays one client connection to its owner sidecar; see the module docstring."""

    def __init__(
        self,
        client: ServerConnection,
        upstream: ClientConnection,
        owner: str,
        dial: Dial,
        stats: LBStats,
        key: tuple[str, int | str] | None = None,
        drain_s: float = 1.0,
    ) -> None:
        self.client = client
        self.key = key
        """(tenant, user) this client is placed by: what a rebalancer re-locates."""
        self.upstream = upstream
        self.owner = owner
        self._dial = dial
        self._stats = stats
        self._pumps: set[asyncio.Task[None]] = set()
        self._switching = False
        self._drain_s = drain_s
        self._draining: set[ClientConnection] = set()
        self._finished: asyncio.Future[tuple[str, int, str]] = (
            asyncio.get_running_loop().create_future()
        )

    @property
    def finished(self) -> bool:
        return self._finished.done()

    # --- lifecycle --------------------------------------------------------------------
    async def run(self) -> None:
        """Relay until one side leaves (or `shutdown`), then close the other side."""
        self._spawn(self._client_to_upstream())
        self._spawn(self._upstream_to_client(self.upstream))
        side, code, reason = await self._finished
        try:
            if side == "client":
                await self.upstream.close(code, reason)
            elif side == "upstream":
                await self.client.close(code, reason)
            else:  # the LB is going away
                await asyncio.gather(
                    self.client.close(code, reason),
                    self.upstream.close(GOING_AWAY, "lb shutting down"),
                )
        finally:
            draining = list(self._draining)  # cancelling a drain task forgets its upstream
            for task in list(self._pumps):
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            await asyncio.gather(*(old.close(GOING_AWAY) for old in draining))

    def shutdown(self, code: int = SERVICE_RESTART, reason: str = "lb restarting") -> None:
        """Ask `run` to close both sides (client gets `code`); returns at once."""
        self._finish("lb", code, reason)

    async def switch_to(self, owner: str, url: str) -> None:
        """Move this client to sidecar `owner` at base `url` without closing it.

        Connects the new upstream first (on failure nothing changes and the error
        propagates), then swaps the attribute the client→upstream pump reads. The old
        upstream drains in the background: its pump keeps forwarding whatever the old
        sidecar still delivers (it may do so until the new sidecar's take-over reaches
        the user's owner) until the old sidecar closes it, or for `drain_s` at most,
        after which the LB closes it with 1000 "moved".
        """
        if self.finished:
            raise RelayClosed("relay already finished")
        new = await self._dial(url, self.owner)
        if self.finished:  # the client left while we were dialling
            await new.close(NORMAL, "client gone")
            raise RelayClosed("relay finished during switch")
        old, old_owner = self.upstream, self.owner
        self.upstream, self.owner = new, owner  # the switch: next client message goes to new
        self._stats.moved(old_owner, owner)
        self._spawn(self._upstream_to_client(new))
        self._draining.add(old)
        self._spawn(self._drain(old))

    async def _drain(self, old: ClientConnection) -> None:
        try:
            async with asyncio.timeout(self._drain_s):
                await old.wait_closed()
        except TimeoutError:
            await old.close(NORMAL, "moved")
        finally:
            self._draining.discard(old)

    def _control(self, frame: str, upstream: ClientConnection) -> None:
        """A control frame from a sidecar: today only "move", handled off the pump."""
        if not frame.startswith(MOVE_PREFIX) or upstream is not self.upstream:
            log.warning("ignoring control frame %r", frame[:60])
            return
        owner, _, url = frame[len(MOVE_PREFIX) :].strip().partition(" ")
        if not owner or not url.startswith(("ws://", "wss://")) or owner == self.owner:
            log.warning("ignoring move frame %r", frame[:120])
            return
        if self._switching or self.finished:
            return
        self._spawn(self._move(owner, url.rstrip("/")))

    async def _move(self, owner: str, url: str) -> None:
        self._switching = True
        try:
            await self.switch_to(owner, url)
        except RelayClosed:
            pass
        except Exception as exc:  # the client stays where it was
            self._stats.upstream_failures["switch"] += 1
            log.warning("cannot move %s to %s at %s: %s", self.key, owner, url, exc)
        finally:
            self._switching = False

    # --- pumps ------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    def _finish(self, side: str, code: int, reason: str) -> None:
        if not self._finished.done():
            self._finished.set_result((side, code, reason))

    async def _client_to_upstream(self) -> None:
        stats = self._stats
        client = self.client
        try:
            async for message in client:
                while True:
                    upstream = self.upstream
                    try:
                        await upstream.send(message)
                        break
                    except ConnectionClosed:
                        if upstream is self.upstream:
                            return  # the current upstream died: its pump reports how
                        # switched while sending to the old one: resend to the new one
                stats.client_to_upstream += 1
        except ConnectionClosed:
            pass
        rcvd = client.protocol.close_rcvd  # no-op below if we closed the client ourselves
        code = sendable(rcvd.code if rcvd else None, NORMAL)
        self._finish("client", code, rcvd.reason if rcvd else "")

    async def _upstream_to_client(self, upstream: ClientConnection) -> None:
        stats = self._stats
        client = self.client
        try:
            async for message in upstream:
                if message.__class__ is str and message[:1] == CONTROL_MARK:
                    self._control(message, upstream)  # type: ignore[arg-type]
                    continue
                try:
                    await client.send(message)
                except ConnectionClosed:
                    return  # the client left: its own pump decides what happens
                stats.upstream_to_client += 1
        except ConnectionClosed:
            pass  # the upstream ended abnormally; handled below
        if upstream is not self.upstream or self.finished:
            return  # a drained old upstream, or the relay is already ending
        rcvd = upstream.protocol.close_rcvd
        if rcvd is None:
            stats.upstream_failures["vanished"] += 1
            self._finish("upstream", SERVICE_RESTART, "sidecar went away")
        else:
            self._finish("upstream", sendable(rcvd.code, NORMAL), rcvd.reason)
