"""A client's connection after its handshake: websockets' sans-I/O protocol under a plain
`asyncio.Protocol`.

websockets' asyncio layer costs a task, a message assembler and several awaits per
frame; measured on this machine it was most of the sidecar's CPU per message and ~9 KB
per idle connection. After the upgrade (still done by websockets' `serve`), the socket is
handed to a `ClientSession`. Its read side (`wsop.sidecar.framing.FrameReader`) frames
the input, unmasks the common frames itself and hands every other frame whole to the
very `ServerProtocol` that did the handshake. Text messages are decoded here, once (the
owner gets `str` for text and `bytes` for binary, as from websockets' own connections,
and parses the `str` without decoding it again); invalid UTF-8 fails the connection with
1007 (RFC 6455 §8.1).

Messages are handled synchronously when they can be (direct messages, errors) — no task,
no queue. A frame that needs Redis (a team message) runs as a task, and the frames
behind it wait in a per-connection backlog, so one client's messages are still handled in
the order they were sent.

Writes go through `wsop.sidecar.outbox.Outbox` (`protocol.send_text` + `send_data`), like
they did for websockets' connections, so the outbox takes either kind. Closing, the
server closes TCP first (RFC 6455 §7.1.1), but only its sending half: `_half_close`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State
from websockets.server import ServerProtocol

from wsop import protocol as wire
from wsop.auth import Identity
from wsop.badrequest import AnswersBadRequests
from wsop.detach import Detachable
from wsop.httpadmin import drop_subprotocol_callback, path_of
from wsop.httpbody import BodyReading
from wsop.protocol import CloseCode
from wsop.quotas import TokenBucket
from wsop.sidecar.framing import FrameReader
from wsop.sidecar.outbox import Outbox
from wsop.trunk.channel import Channel

log = logging.getLogger("wsop.sidecar")

BACKLOG_PAUSE: Final = 64
"""Frames waiting behind a team message before reading from the client pauses."""
CLOSE_TIMEOUT_S: Final = 2.0
WRITE_HIGH: Final = 1024 * 1024
"""Unsent bytes above which a client counts as not keeping up (`pause_writing`)."""
WRITE_CAP: Final = 16 * WRITE_HIGH
"""Unsent bytes at which a client that is not keeping up is closed at once, grace or not:
what it makes the sidecar write (pongs to a ping flood, acks, deliveries) must not grow
the process without bound while the grace runs (an audit's ping flood: +150 MB in 10 s)."""
CAP_CHECK_S: Final = 0.1
SLOW_CLIENT_S: Final = 10.0
"""By default, a client that stays above `WRITE_HIGH` this long is closed (the owner's
`slow_client_s`, `wsop sidecar --slow-client`): its unread messages would otherwise
pile up in the sidecar's memory without bound."""


class LbControl(str):
    """A control frame from the LB in front of the session: a text message led by NUL
    that came as one unfragmented frame over an LB leg. The LB removes exactly that
    shape from what clients send, so a client cannot forge one; a client's NUL-led
    message in any other shape (binary, fragmented) is an ordinary, invalid message."""

    __slots__ = ()


class SessionOwner(Protocol):
    """What a session needs from the sidecar."""

    outbox: Outbox
    slow_client_s: float
    """Seconds over `WRITE_HIGH` before `client_too_slow` (default `SLOW_CLIENT_S`)."""

    def client_frame(
        self, session: ClientSession, data: str | bytes
    ) -> Coroutine[Any, Any, None] | None:
        """One message: `str` from a text frame (valid UTF-8), `bytes` from a binary one."""
        ...

    def client_gone(self, session: ClientSession) -> None: ...

    def client_too_slow(self, session: ClientSession) -> None: ...


class ClientSession(FrameReader):
    """One client connection in its data phase (see the module docstring)."""

    __slots__ = (
        "ident",
        "index",
        "transport",
        "_owner",
        "_backlog",
        "_close_timer",
        "_paused",
        "_slow_timer",
        "_cap_timer",
        "open",
        "via_lb",
        "bucket",
        "counted",
        "held",
        "replayed",
        "coalescing",
    )

    def __init__(
        self,
        protocol: ServerProtocol,
        ident: Identity,
        index: int,
        owner: SessionOwner,
        via_lb: bool = False,
    ) -> None:
        drop_subprotocol_callback(protocol)  # else it keeps the asyncio connection alive
        super().__init__(protocol)
        self.ident = ident
        self.index = index
        self.transport: asyncio.Transport | None = None
        self._owner = owner
        self._backlog: deque[str | bytes] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._slow_timer: asyncio.TimerHandle | None = None
        self._cap_timer: asyncio.TimerHandle | None = None
        self.open = True
        """The socket is still ours (until `connection_lost`)."""
        self.coalescing = False
        """Open on a transport that coalesces writes itself (a trunk channel): the
        outbox writes to it at once instead of queueing behind the protocol."""
        self.via_lb = via_lb
        """An LB holds this client (it said so in the handshake): it can be moved."""
        self.bucket: TokenBucket | None = None
        """Paces its messages (`messages_per_second`); None: no limit."""
        self.counted = False
        """It is counted in the tenant's connections (quotas): uncount it when it goes."""
        self.replayed: tuple[str, int] | None = None
        """(epoch, seq) its replay ended at: live frames at or before it are not sent."""
        self.held: list[tuple[str, bytes]] | None = None
        """While it is replaying (`?since=`): the live frames that arrived meanwhile,
        (offset, frame), sent after the replay (`wsop.sidecar.recovery`)."""

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not transport.is_closing():  # a client gone right after its 101: uvloop raises
            self.transport.set_write_buffer_limits(high=WRITE_HIGH)
            self.coalescing = isinstance(transport, Channel)

    def pause_writing(self) -> None:
        """The client is not reading as fast as it is sent to: give it `slow_client_s`."""
        if self._slow_timer is None and self.open:
            loop = asyncio.get_running_loop()
            self._slow_timer = loop.call_later(self._owner.slow_client_s, self._too_slow)
            self._cap_timer = loop.call_later(CAP_CHECK_S, self._check_cap)

    def resume_writing(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        if self._cap_timer is not None:
            self._cap_timer.cancel()
            self._cap_timer = None

    def _check_cap(self) -> None:
        """While the grace runs: past `WRITE_CAP` unsent, the client is too slow now."""
        self._cap_timer = None
        transport = self.transport
        if self._slow_timer is None or not self.open or transport is None:
            return
        if transport.get_write_buffer_size() > WRITE_CAP:
            self._slow_timer.cancel()
            self._too_slow()
            return
        self._cap_timer = asyncio.get_running_loop().call_later(CAP_CHECK_S, self._check_cap)

    def _too_slow(self) -> None:
        self._slow_timer = None
        if not self.open:
            return
        self._owner.client_too_slow(self)
        self.close(
            CloseCode.POLICY_VIOLATION, "too slow: messages were not read"
        )  # (it will not read this either)

    def _protocol_acted(self) -> None:
        if self.protocol.writes:  # pongs, close frames, replies to the frames just handled
            self._owner.outbox.mark(self)  # one write at the end of the pass
        if self.protocol.close_expected():
            self._arm_close()

    def eof_received(self) -> bool | None:
        self._pending = None  # a partial frame: websockets sees the stream end too soon
        self.protocol.receive_eof()
        self.send_data()
        return None  # asyncio closes the transport (our half is closed or closes now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open:
            return
        self.open = self.coalescing = False
        self.protocol.receive_eof()  # state → CLOSED: the outbox stops writing here
        self.protocol.data_to_send()
        for timer in (self._close_timer, self._slow_timer):
            if timer is not None:
                timer.cancel()
        self._owner.client_gone(self)

    # -- writing -----------------------------------------------------------------------

    def send_data(self) -> None:
        """Write what the protocol has queued (the outbox calls this once a pass)."""
        transport = self.transport
        if transport is None or not self.open:
            return  # not attached yet (frames wait in the protocol), or gone
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            else:  # the protocol's EOF marker: the server closes TCP first
                self._half_close(transport)

    def _half_close(self, transport: asyncio.Transport) -> None:
        """Close our half of TCP after the close frame, and keep reading until the client
        closes its half (`eof_received`), or abort after `CLOSE_TIMEOUT_S`.

        Closing the whole socket while client bytes are still unread (the rest of an
        oversize frame, frames sent before our close frame arrived) makes Linux send an
        RST, and a relaying LB that reads the RST before our close frame tells the client
        "sidecar went away" (1012) instead of, say, 1009. websockets' parser discards
        what is read meanwhile."""
        if not transport.can_write_eof():  # (TLS): nothing better than a close
            transport.close()
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError):  # (uvloop raises when the transport is closing)
            transport.close()
            return
        if self._paused:  # a long backlog paused reading: the client's FIN must get in
            self._paused = False
            transport.resume_reading()
        self._arm_close()

    def send_now(self, text: str) -> None:
        """Send one text frame at once (outside the outbox: e.g. before a close)."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_text(text.encode())
            self.send_data()

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; abort if the client does not finish it in time."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self.send_data()
        self._arm_close()

    def abort(self) -> None:
        if self.open and self.transport is not None:
            self.transport.abort()

    def _arm_close(self) -> None:
        if self._close_timer is None and self.open:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.abort)

    def ping(self) -> None:
        """Keepalive: a ping now; `pong_due` stays set until the client sends anything."""
        if self.protocol.state is State.OPEN:
            self.pong_due = True
            self.protocol.send_ping(b"")
            self.send_data()

    # -- messages ----------------------------------------------------------------------

    def _message(self, data: bytes, text: bool, one_frame: bool = True) -> None:
        """One whole message: decoded if text (the only UTF-8 pass: the owner parses
        the `str`), handled now, or queued behind a message that is still running."""
        if text:
            try:
                message: str | bytes = data.decode()
            except UnicodeDecodeError as exc:
                self._fail(CloseCode.INVALID_DATA, f"invalid UTF-8 at byte {exc.start}")
                return
            if data[:1] == b"\x00" and one_frame and self.via_lb:
                message = LbControl(message)
        else:
            message = data
        if self._backlog is not None:
            self._backlog.append(message)
            if len(self._backlog) >= BACKLOG_PAUSE and not self._paused:
                self._set_paused(True)
            return
        pending = self._handle(message)
        if pending is not None:
            self._backlog = deque()
            asyncio.get_running_loop().create_task(self._drain(pending))

    def _handle(self, data: str | bytes) -> Coroutine[Any, Any, None] | None:
        try:
            return self._owner.client_frame(self, data)
        except Exception:
            log.exception("handling a frame of %s/%s", self.ident.tenant, self.ident.user)
            self.send_now(wire.encode_error(None, wire.INTERNAL, "internal error"))
            return None

    async def _drain(self, pending: Coroutine[Any, Any, None]) -> None:
        """Run the frame that needed to wait, then the ones that queued behind it."""
        backlog = self._backlog
        assert backlog is not None
        try:
            while pending is not None:
                try:
                    await pending
                except Exception:
                    log.exception("handling a frame of %s/%s", self.ident.tenant, self.ident.user)
                    self.send_now(wire.encode_error(None, wire.INTERNAL, "internal error"))
                pending = None
                while backlog and pending is None:
                    pending = self._handle(backlog.popleft())
                    if self._paused and len(backlog) < BACKLOG_PAUSE // 2:
                        self._set_paused(False)
        finally:
            self._backlog = None
            if self._paused:
                self._set_paused(False)

    @property
    def reading_paused(self) -> bool:
        """We stopped reading it (backpressure): its pongs wait unread in the socket, so
        silence then says nothing about whether it is alive."""
        return self._paused

    def _set_paused(self, paused: bool) -> None:
        """Backpressure: stop reading from a client whose backlog is long."""
        if paused and self.protocol.eof_sent:
            return  # half-closed: we read on until the client's FIN
        self._paused = paused
        transport = self.transport
        if transport is None or not self.open or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()


@dataclass(slots=True)
class ClientHandshake:
    """What the handshake of a `/ws` client established, for the session it becomes."""

    identity: Identity
    via_lb: bool = False
    """The LB holds this client (its signed word said so): it may be moved."""
    moved_from: str | None = None
    """The LB is moving this client here from that sidecar."""
    since: str | None = None
    """`?since=`: the offset of the last message it saw (it reconnects to catch up)."""
    index: int | None = None
    """The user's bit position, once the tenant's directory gave one."""
    counted: bool = False
    """Counted in the tenant's connections (quotas)."""


class SidecarServerConnection(AnswersBadRequests, BodyReading, Detachable, ServerConnection):
    """The handshake of any sidecar request; `/ws` clients are detached into sessions
    afterwards and `/trunk` sockets into trunks, peer links and admin requests stay with
    websockets (and API requests with a body have it read beside websockets:
    `wsop.httpbody`)."""

    client: ClientHandshake | None = None
    """Set for a `/ws` client by the handshake."""
    peer: str | None = None
    """Set for a `/peer` link: the name of the sidecar at its other end."""
    trunk: str | None = None
    """Set for an LB's `/trunk`: the LB's name (`wsop.sidecar.trunks`)."""

    def _relayable(self) -> bool:
        return self.request is not None and path_of(self.request) in ("/ws", "/trunk")
