"""One client's pipe to the sidecar that owns it, with a seam to move it while it is open.

After both handshakes (websockets does them: `wsop.lb.handshake`), a `Relay` takes the
two sockets over and relays *raw bytes* (`wsop.lb.sides`): client frames arrive masked,
exactly what a client-side connection must send, sidecar frames arrive unmasked, exactly
what a server-side connection must send, so both pass through unchanged — no framing,
no unmasking, one `write` per read instead of one per frame. A frame-header scanner
(`wsop.lb.frames`) on each direction finds message boundaries, counts messages, sees
close frames, and (sidecar → client only) takes the sidecar's NUL-prefixed control
frames out of the stream. Pings and pongs pass through: keep-alive is end to end.

Moving a client (`switch_to`) happens at a message boundary in both directions: the
client's bytes go to the new upstream from the first message that starts after the
switch, and the LB tells the old sidecar so (a `"\x00wsop:moved"` control frame, where
that stream is between messages too). The old upstream keeps *draining* into the client
stream — spliced in only between messages (`writer`) — until the old sidecar closes it,
which it does once it owes the client nothing more (acks of messages it was still
routing, deliveries already on their way), or for `drain_s` at most, after which the LB
closes it with 1000 "moved". Only the *current* upstream ending ends the relay.

Close codes: close frames pass through end to end, so the client gets the upstream's
own close code and reason and the upstream gets the client's. An upstream that vanished
without a close frame (crash, kill -9, network) becomes 1012 (service restart: reconnect,
you will be routed to a live sidecar); a client that vanished becomes 1000 upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from wsop.lb.frames import text_frame
from wsop.lb.handshake import LBClientConnection, LBServerConnection
from wsop.lb.phases import Phase, next_phase
from wsop.lb.sides import ClientSide, UpstreamSide
from wsop.lb.stats import LBStats
from wsop.protocol import MOVE_PREFIX, MOVED_FRAME, UNSENDABLE_CLOSE_CODES, CloseCode

log = logging.getLogger("wsop.lb")

Dial = Callable[[str, str | None], Awaitable[LBClientConnection]]
"""Open the upstream WebSocket for this client on a sidecar base url (``ws://h:p``);
the second argument is the sidecar it moves from (sent as ``?moved_from=``), if any."""

CONTROL_MARK: Final = "\x00"
"""Sidecar → LB control frames start with NUL (a JSON frame never does); never forwarded."""
"""``"\x00wsop:move NAME URL"``: the sidecar asks the LB to switch this client to NAME."""

SERVICE_RESTART: Final = int(CloseCode.SERVICE_RESTART)
TRY_AGAIN_LATER: Final = int(CloseCode.TRY_AGAIN_LATER)
GOING_AWAY: Final = int(CloseCode.GOING_AWAY)
NORMAL: Final = int(CloseCode.NORMAL)
CLOSE_TIMEOUT: Final = 3.0
"""How long a peer may take to answer a close frame and close its socket before abort."""


_MOVED: Final = text_frame(MOVED_FRAME, mask=True)  # masked: the LB is the sidecar's client
_MOVES: set[asyncio.Task[None]] = set()
"""Strong references to running sidecar-requested moves (a bare task may be collected)."""


class RelayClosed(Exception):
    """`switch_to` was called on a relay that has already finished."""


def sendable(code: int | None, fallback: int) -> int:
    """A close code we may put in a frame: `fallback` for none/reserved ones."""
    if code is None or code in UNSENDABLE_CLOSE_CODES or not (1000 <= code <= 4999):
        return fallback
    return code


class Relay:
    """Relays one client connection to its owner sidecar; see the module docstring."""

    # thousands live at once, mostly idle: slots and lazy futures keep each one small
    __slots__ = (
        "key",
        "owner",
        "stats",
        "close_timeout",
        "client",
        "upstream",
        "draining",
        "waiting",
        "writer",
        "client_paused",
        "ending",
        "_dial",
        "_drain_s",
        "_on_done",
        "phase",
        "_boundary",
        "_pending",
        "_deadline",
        "_done",
        "_conns",
        "_allow_move",
    )

    def __init__(
        self,
        client: LBServerConnection,
        upstream: LBClientConnection,
        owner: str,
        dial: Dial,
        stats: LBStats,
        key: tuple[str, int | str] | None = None,
        drain_s: float = 15.0,
        on_done: Callable[[Relay], None] | None = None,
        allow_move: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.key = key
        """(tenant, user) this client is placed by: what a rebalancer re-locates."""
        self.owner = owner
        self.stats = stats
        self.close_timeout = CLOSE_TIMEOUT
        self.client = ClientSide(self)
        self.upstream = UpstreamSide(self, owner)
        """The current upstream: client messages go here; only its end ends the relay."""
        self.draining: list[UpstreamSide] = []
        self.waiting: list[UpstreamSide] = []
        """Upstreams holding a backlog until `writer` is done with its message (FIFO)."""
        self.writer: UpstreamSide | None = None
        """The upstream whose message is half-written to the client (others must wait)."""
        self.client_paused = False
        self.ending: tuple[str, int, str] | None = None
        """(side, code, reason) once the relay is ending: "client", "upstream" or "lb"."""
        self._dial = dial
        self._drain_s = drain_s
        self._on_done = on_done
        self._boundary: asyncio.Future[None] | None = None
        self._pending: tuple[str, LBClientConnection] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.phase = Phase.OPEN
        """Where the relay is in its life (`wsop.lb.phases`: the table of transitions)."""
        self._done: asyncio.Future[None] | None = None
        self._conns = (client, upstream)
        self._allow_move = allow_move
        """Whether (name, url) is a sidecar the LB may move a client to: a member."""

    @property
    def finished(self) -> bool:
        """The relay is ending (or over): no more switches."""
        return self.phase is Phase.ENDING or self.phase is Phase.OVER

    @property
    def over(self) -> bool:
        """Every socket of this relay is closed."""
        return self.phase is Phase.OVER

    def _on(self, event: str) -> bool:
        """Apply `event` to the phase; False when it does not apply (see the table)."""
        phase = next_phase(self.phase, event)
        if phase is None:
            return False
        self.phase = phase
        return True

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Take both sockets over, then let the bytes each side sent meanwhile flow."""
        client, upstream = self._conns
        del self._conns
        upstream.attach(self.upstream)
        client.attach(self.client)
        upstream.replay()  # what the sidecar sent already (its first frames, or its EOF)
        client.replay()

    async def wait(self) -> None:
        if self.over:
            return
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._done)

    def shutdown(self, code: int = SERVICE_RESTART, reason: str = "lb restarting") -> None:
        """Close both sides (the client gets `code`) with the LB's own close frames."""
        if self._end("lb", code, reason):
            self.client.inject_close(code, reason, self.close_timeout)
            for side in (self.upstream, *self.draining):
                side.inject_close(GOING_AWAY, "lb shutting down", self.close_timeout)

    def _end(self, side: str, code: int, reason: str) -> bool:
        if not self._on("end"):
            return False
        self.ending = (side, code, reason)
        if self._boundary is not None and not self._boundary.done():
            self._boundary.set_exception(RelayClosed("relay finished during switch"))
        # One backstop for every way a closing handshake can stall: abort what is left.
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.close_timeout + 1, self._abort_all)
        return True

    def _abort_all(self) -> None:
        for side in (self.client, self.upstream, *self.draining):
            side.abort()

    def _check_done(self) -> None:
        if self.over or not self.client.lost:
            return
        if not self.upstream.lost or any(not side.lost for side in self.draining):
            return
        if not self._on("all_closed"):  # (every socket gone: the relay ended first)
            self.phase = Phase.OVER
        if self._done is not None:
            self._done.set_result(None)
        if self._deadline is not None:
            self._deadline.cancel()
        if self._on_done is not None:
            self._on_done(self)

    # --- events from the sides --------------------------------------------------------
    def client_closing(self, client: ClientSide) -> None:
        """The client sent a close frame (forwarded to the upstream, which answers it)."""
        code, reason = client.close_rcvd or (None, "")
        self._end("client", sendable(code, NORMAL), reason)
        if client.close_sent:
            client.finish_close()
        upstream = self.upstream
        if upstream.close_sent and upstream.close_rcvd is not None:
            upstream.finish_close()
        for side in self.draining:
            side.inject_close(GOING_AWAY, "client left", self.close_timeout)

    def client_lost(self) -> None:
        client = self.client
        if client.close_rcvd is None and self._end("client", NORMAL, ""):  # vanished
            self.upstream.inject_close(NORMAL, "", self.close_timeout)
        for side in (self.upstream, *self.draining):
            side.inject_close(GOING_AWAY, "client left", self.close_timeout)
        self._check_done()

    def upstream_closing(self, side: UpstreamSide, frame: bytes) -> None:
        """A sidecar sent a close frame: the current one's goes to the client; a draining
        one is answered by the LB (the client must not see it)."""
        if side is self.upstream:
            client = self.client
            if client.sink:  # (`writer` is None or `side`: a frame boundary)
                client.send_close(frame)
            code, reason = side.close_rcvd or (None, "")
            self._end("upstream", sendable(code, NORMAL), reason)
            if client.close_rcvd is not None:
                client.finish_close()
        elif not side.close_sent:
            code, reason = side.close_rcvd or (None, "")
            side.inject_close(sendable(code, NORMAL), reason, self.close_timeout)
        if side.close_sent:
            side.finish_close()

    def upstream_lost(self, side: UpstreamSide) -> None:
        if self.writer is side:  # it died mid-message: the client stream is unusable
            self.writer = None
            self.client.abort()
        if side is not self.upstream:
            if side in self.draining:
                self.draining.remove(side)
        elif side.close_rcvd is None and self._end("upstream", SERVICE_RESTART, ""):
            self.stats.upstream_failures["vanished"] += 1
            self.client.inject_close(SERVICE_RESTART, "sidecar went away", self.close_timeout)
            for old in self.draining:
                old.inject_close(GOING_AWAY, "lb closing", self.close_timeout)
        elif self.ending is not None and self.client.close_rcvd is not None:
            self.client.finish_close()
        elif self.client.close_sent:  # the sidecar failed the connection (RFC 6455 §7.1.7)
            self.client.half_close()
        self._check_done()

    def writer_released(self) -> None:
        """The client stream is between messages again: let waiting upstreams in."""
        waiting = self.waiting
        while waiting and self.writer is None:
            waiting.pop(0).flush_backlog()

    def client_write_paused(self, paused: bool) -> None:
        """Backpressure: the client's socket buffer is full (or drained again)."""
        self.client_paused = paused
        for side in (self.upstream, *self.draining):
            if paused:
                side.pause_reading()
            elif not side.backlog:
                side.resume_reading()

    def control(self, payload: bytes, side: UpstreamSide) -> None:
        """A control frame from a sidecar: today only "move", handled off the data path."""
        frame = payload.decode("utf-8", "replace")
        if not frame.startswith(MOVE_PREFIX) or side is not self.upstream:
            log.warning("ignoring control frame %r", frame[:60])
            return
        owner, _, url = frame[len(MOVE_PREFIX) :].strip().partition(" ")
        if not owner or not url.startswith(("ws://", "wss://")) or owner == self.owner:
            log.warning("ignoring move frame %r", frame[:120])
            return
        url = url.rstrip("/")
        if self._allow_move is not None and not self._allow_move(owner, url):
            # only to a sidecar of our own membership: never dial a URL a frame names
            self.stats.refused["move_to_non_member"] += 1
            log.warning("ignoring a move to %s at %s: not a member", owner, url[:80])
            return
        if not self._on("move"):  # one switch at a time, and none once ending
            return
        task = asyncio.ensure_future(self._move(owner, url))
        _MOVES.add(task)
        task.add_done_callback(_MOVES.discard)

    async def _move(self, owner: str, url: str) -> None:
        try:
            await self.switch_to(owner, url)
        except RelayClosed:
            pass
        except Exception as exc:  # the client stays where it was
            self.stats.upstream_failures["switch"] += 1
            log.warning("cannot move %s to %s at %s: %s", self.key, owner, url, exc)
        finally:
            self._on("moved")

    # --- the switch -------------------------------------------------------------------
    async def switch_to(self, owner: str, url: str) -> None:
        """Move this client to sidecar `owner` at base `url` without closing it.

        Connects the new upstream first (on failure nothing changes and the error
        propagates), then, at the client's next message boundary (now, unless a message
        is half-relayed), sends the client's bytes to the new upstream and lets the old
        one drain: its messages still reach the client (it may keep delivering until the
        new sidecar's take-over reaches the user's owner) until the old sidecar closes
        it, or for `drain_s` at most, after which the LB closes it with 1000 "moved".
        """
        if self.finished:
            raise RelayClosed("relay already finished")
        conn = await self._dial(url, self.owner)
        if self.finished:  # the client left while we were dialling
            await conn.close(NORMAL, "client gone")
            raise RelayClosed("relay finished during switch")
        if self.client.at_boundary:
            self._switch(owner, conn)
            return
        # A client message is half-relayed: switch where it ends (the scanner calls us).
        self._boundary = boundary = asyncio.get_running_loop().create_future()
        self._pending = (owner, conn)
        self.client.want_boundary = True
        try:
            await boundary
        except RelayClosed:
            await conn.close(NORMAL, "client gone")
            raise
        finally:
            self._boundary = self._pending = None
            self.client.want_boundary = False

    def at_client_boundary(self) -> None:
        """The client's scanner is between messages: do the pending switch right here."""
        self.client.want_boundary = False
        boundary, pending = self._boundary, self._pending
        if boundary is None or boundary.done() or pending is None:
            return
        self._switch(*pending)
        boundary.set_result(None)

    def _switch(self, owner: str, conn: LBClientConnection) -> None:
        old, old_owner = self.upstream, self.owner
        new = UpstreamSide(self, owner)
        self.upstream, self.owner = new, owner  # the switch: client bytes go to new
        self.stats.moved(old_owner, owner)
        old.draining = True
        self.draining.append(old)
        if old.write_paused:
            self.client.resume_reading()
        conn.detach(new)
        if self.client_paused:
            new.pause_reading()
        if not old.lost:
            if old.sink:  # (its stream is between messages: the switch is at a boundary)
                old.transport.write(_MOVED)  # type: ignore[union-attr]
            loop = asyncio.get_running_loop()
            old.timer = loop.call_later(self._drain_s, self._drain_expired, old)

    def _drain_expired(self, old: UpstreamSide) -> None:
        old.timer = None
        old.inject_close(NORMAL, "moved", self.close_timeout)
