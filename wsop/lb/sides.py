"""The two kinds of raw asyncio protocols a relay is made of: its client, its upstreams.

Each side is a `FrameScanner` (frames are located, never decoded) and an
`asyncio.Protocol` on one detached socket. The per-chunk path is: scan, write the chunk
(usually the very bytes object read) to the other side's transport, add the number of
messages to an int. Everything else — close frames, control frames, switching,
backpressure, teardown — is rare and lives in `wsop.lb.relay.Relay`, which the sides call.

Close-frame bookkeeping per side: `close_rcvd` (it sent us a close frame), `close_sent`
(a close frame went to it: forwarded or our own) and `injected` (the LB sent it a close
frame of its own: nothing more may be forwarded to it, and its reply is not forwarded).
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol, cast

from wsop.lb.frames import FrameScanner, close_frame, parse_close
from wsop.lb.stats import LBStats


class Relay(Protocol):
    """What the sides need from the relay that owns them (`wsop.lb.relay.Relay`): the
    other sides, the shared stats, and the rare-event handlers. Declared here, so the
    sides depend on this narrow face and the relay on the sides — not each on the other."""

    client: ClientSide
    upstream: UpstreamSide
    writer: UpstreamSide | None
    waiting: list[UpstreamSide]
    client_paused: bool
    close_timeout: float
    stats: LBStats

    def at_client_boundary(self) -> None: ...
    def client_closing(self, client: ClientSide) -> None: ...
    def client_lost(self) -> None: ...
    def client_write_paused(self, paused: bool) -> None: ...
    def control(self, payload: bytes, side: UpstreamSide) -> None: ...
    def upstream_closing(self, side: UpstreamSide, frame: bytes) -> None: ...
    def upstream_lost(self, side: UpstreamSide) -> None: ...
    def writer_released(self) -> None: ...


WRITE_HIGH: Final = 64 * 1024
"""Above this many unsent bytes on one side, reading from the side(s) feeding it pauses."""
WRITE_LOW: Final = 16 * 1024


class Side(FrameScanner, asyncio.Protocol):
    """State shared by both kinds of side."""

    __slots__ = (
        "relay",
        "transport",
        "sink",
        "close_rcvd",
        "close_sent",
        "injected",
        "lost",
        "timer",
    )

    masked_out = False
    """Whether frames the LB writes to this side must be masked (towards sidecars)."""

    def __init__(self, relay: Relay, intercept: bool = False) -> None:
        super().__init__(intercept)
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.sink = False
        """Frames may be forwarded to this side: it is connected, no close frame went to
        it, the LB is not closing it. The one flag the per-chunk path checks."""
        self.close_rcvd: tuple[int | None, str] | None = None
        self.close_sent = False
        self.injected = False
        self.lost = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses: no isinstance check)
        transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        self.transport = transport
        self.sink = True

    def eof_received(self) -> bool | None:
        return None  # a WebSocket peer never half-closes usefully: close, connection_lost

    def send_close(self, frame: bytes) -> None:
        """Write a close frame (forwarded or the LB's own): the last frame this side gets."""
        self.close_sent = True
        if self.sink:
            self.sink = False
            self.transport.write(frame)  # type: ignore[union-attr]

    def inject_close(self, code: int, reason: str, timeout: float) -> None:
        """Send this side a close frame of the LB's own and stop forwarding to it; abort
        the socket if the peer has not closed it `timeout` later. A side in the middle
        of a frame we forwarded cannot take a frame of ours: it is aborted at once."""
        if self.lost or self.injected:
            return
        self.injected = True
        if not self.close_sent:  # else a forwarded close frame went out: just wait
            if not self.receives_at_boundary():
                self.abort()
                return
            self.send_close(close_frame(code, reason, mask=self.masked_out))
        if self.close_rcvd is not None:
            self.finish_close()
        self.arm(timeout)

    def receives_at_boundary(self) -> bool:
        """The stream written to this side ends between messages."""
        raise NotImplementedError

    def arm(self, timeout: float) -> None:
        """Abort the socket `timeout` from now unless it closes (replaces a drain timer)."""
        if self.timer is not None:
            self.timer.cancel()
        if not self.lost:
            self.timer = asyncio.get_running_loop().call_later(timeout, self.abort)

    def abort(self) -> None:
        self.sink = False
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def finish_close(self) -> None:
        """Close frames went both ways. The server side closes TCP first (RFC 6455 §7.1.1),
        so the LB closes a client's socket now and waits for a sidecar to close its own."""
        raise NotImplementedError

    def pause_reading(self) -> None:
        transport = self.transport
        if transport is not None and not self.lost and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and not self.lost and not transport.is_closing():
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.sink = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ClientSide(Side):
    """The client's socket: its frames go to the relay's current upstream — except the
    NUL-prefixed text frames that are the LB's own word to a sidecar (`"\\x00wsop:…"`):
    a client's are taken out of the stream, so it can never speak for the LB."""

    __slots__ = ()

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay, intercept=True)

    def data_received(self, data: bytes) -> None:
        self.relay.stats.client_to_upstream += self.feed(data)

    def emit(self, chunk: bytes) -> None:
        upstream = self.relay.upstream
        if upstream.sink:
            upstream.transport.write(chunk)  # type: ignore[union-attr]

    def on_close(self, frame: bytes, payload: bytes) -> None:
        self.close_rcvd = parse_close(payload)
        upstream = self.relay.upstream
        if upstream.sink:  # end to end: the sidecar answers it, with the client's code
            upstream.send_close(frame)
        self.relay.client_closing(self)

    def on_control(self, payload: bytes) -> None:
        self.relay.stats.refused["client_control_frame"] += 1

    def on_boundary(self) -> None:
        self.relay.at_client_boundary()

    def receives_at_boundary(self) -> bool:
        return self.relay.writer is None

    def finish_close(self) -> None:
        self.sink = False
        if self.transport is not None and not self.lost:
            self.transport.close()  # flushes what is buffered, then FIN

    def half_close(self) -> None:
        """The sidecar closed TCP right after the close frame forwarded to the client: it
        failed the connection and waits for nothing. So the LB closes its sending half
        towards the client now, as the sidecar would have, and reads on: the client's
        close frame or FIN ends it (the relay's deadline, if neither comes). Waiting for
        a close frame instead kept such clients 4 s, then aborted them — and a client
        whose stream the violation had desynchronised could never send one the LB sees."""
        self.sink = False
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()  # after what is buffered: the close frame
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.relay.client_lost()

    def pause_writing(self) -> None:
        self.relay.client_write_paused(True)

    def resume_writing(self) -> None:
        self.relay.client_write_paused(False)


class UpstreamSide(Side):
    """One sidecar's socket for this client; several only while an old one drains.

    Frames from every upstream go to the one client stream, so only one upstream may be
    in the middle of a message there at a time (`relay.writer`); the others keep what
    they read in `backlog` until it is done."""

    __slots__ = ("owner", "backlog", "backlog_size", "draining", "write_paused", "_closed")

    masked_out = True

    def __init__(self, relay: Relay, owner: str) -> None:
        super().__init__(relay, intercept=True)
        self.owner = owner
        self.backlog: list[bytes] = []
        self.backlog_size = 0
        self.draining = False
        self.write_paused = False
        self._closed: asyncio.Future[None] | None = None  # made by wait_closed, if ever

    @property
    def close_code(self) -> int | None:
        """The code of the close frame this sidecar sent (None: none, or none yet)."""
        return self.close_rcvd[0] if self.close_rcvd else None

    async def wait_closed(self) -> None:
        if self.lost:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        writer = relay.writer
        if writer is not None and writer is not self:
            if not self.backlog:
                relay.waiting.append(self)
            self.backlog.append(data)
            self.backlog_size += len(data)
            if self.backlog_size > WRITE_HIGH:
                self.pause_reading()
            return
        relay.stats.upstream_to_client += self.feed(data)
        if self.skip or self.in_message:
            relay.writer = self
        elif writer is self:
            relay.writer = None
            relay.writer_released()

    def flush_backlog(self) -> None:
        """Scan what arrived while another upstream was mid-message (it is done now)."""
        data = b"".join(self.backlog)
        self.backlog.clear()
        self.backlog_size = 0
        if data:
            self.data_received(data)
        if not self.relay.client_paused:
            self.resume_reading()

    def emit(self, chunk: bytes) -> None:
        client = self.relay.client
        if client.sink:
            client.transport.write(chunk)  # type: ignore[union-attr]

    def on_control(self, payload: bytes) -> None:
        self.relay.control(payload, self)

    def on_close(self, frame: bytes, payload: bytes) -> None:
        self.close_rcvd = parse_close(payload)
        self.relay.upstream_closing(self, frame)

    def on_boundary(self) -> None:  # pragma: no cover - nobody asks
        self.want_boundary = False

    def receives_at_boundary(self) -> bool:
        client = self.relay.client
        return self is not self.relay.upstream or client.at_boundary

    def finish_close(self) -> None:
        self.arm(self.relay.close_timeout)  # the sidecar closes TCP; abort if it does not

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self.relay.upstream_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self is self.relay.upstream:
            self.relay.client.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self is self.relay.upstream:
            self.relay.client.resume_reading()
