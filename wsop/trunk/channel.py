"""One client's byte stream on a trunk: an asyncio transport that is not a socket.

A `Channel` is handed to the very protocol objects a TCP connection gets (websockets'
server connection, then a sidecar `ClientSession`; on the LB a relay side), so they run
unchanged over it. It behaves like asyncio's socket transports where they can tell:

- `write` never blocks and never fails: bytes wait in the channel until the trunk's end
  of the loop pass (`Trunk._flush`), which sends every channel's pending bytes as one
  DATA record each — and the whole trunk as one socket write.
- Flow control is per channel, so a slow client never stalls its trunk. A sender may
  have at most `WINDOW` bytes in flight; the receiver grants more (CREDIT) as its
  protocol takes them. Bytes without credit wait here and count in
  `get_write_buffer_size`, so `pause_writing`/`resume_writing` reach the protocol at its
  own water marks exactly as a socket's full kernel buffer would make them.
- `pause_reading` stops delivery: DATA that arrives meanwhile (within the window the peer
  had) waits here, and is not credited, so the peer runs out of credit instead of this
  side buffering without bound.
- `close` sends what is pending, then CLOSE; `write_eof` the same but reads on; `abort`
  sends what is pending and RESET. A peer's CLOSE is `eof_received` (then a close unless
  the protocol keeps the channel half-open), its RESET or the trunk's loss is
  `connection_lost(ConnectionResetError)`.

The state is plain flags (the life of one channel is short and linear: open, each side
closes its sending half, gone); `wsop.trunk.mux` feeds it records and flushes it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from wsop.trunk.codec import CLOSE, DATA, MAX_DATA, RESET, WINDOW, TrunkFormatError, header
from wsop.trunk.codec import credit as credit_record
from wsop.trunk.codec import record as encode_record

if TYPE_CHECKING:
    from wsop.trunk.mux import Trunk

log = logging.getLogger("wsop.trunk")

GRANT_AT: Final = WINDOW // 4
"""Consumed bytes are credited back in grants of at least this much (one CREDIT record
per 64 KiB read, not one per DATA record)."""
DEFAULT_HIGH: Final = 64 * 1024


class Channel(asyncio.Transport):
    """One multiplexed stream (see the module docstring)."""

    __slots__ = (
        "trunk",
        "id",
        "peer",
        "_protocol",
        "_credit",
        "_window",
        "_consumed",
        "_wbuf",
        "_wsize",
        "_high",
        "_low",
        "_wpaused",
        "_marked",
        "_stalled",
        "_rpaused",
        "_rbuf",
        "_closing",
        "_eof_asked",
        "_close_sent",
        "_eof_rcvd",
        "_eof_pending",
        "_lost",
    )

    def __init__(self, trunk: Trunk, channel_id: int, peer: str = "") -> None:
        self.trunk = trunk
        self.id = channel_id
        self.peer = peer
        """The client's address ("host:port") as the LB saw it; "" when unknown."""
        self._protocol: Any = None
        self._credit = WINDOW
        """DATA bytes this side may still send (the peer's grants)."""
        self._window = WINDOW
        """DATA bytes the peer may still send (our grants)."""
        self._consumed = 0
        """Bytes our protocol took that are not credited back yet."""
        self._wbuf: list[bytes] = []
        self._wsize = 0
        self._high = DEFAULT_HIGH
        self._low = DEFAULT_HIGH // 4
        self._wpaused = False
        self._marked = False
        self._stalled = False
        self._rpaused = False
        self._rbuf: list[bytes] | None = None
        self._closing = False
        """`close` or `abort` was called: nothing more is read or written."""
        self._eof_asked = False
        """`write_eof` was called: CLOSE goes out once the pending bytes have."""
        self._close_sent = False
        self._eof_rcvd = False
        self._eof_pending = False
        """The peer's CLOSE arrived while reading was paused: delivered after the backlog."""
        self._lost = False

    def __repr__(self) -> str:
        return f"<Channel {self.id} on {self.trunk!r}>"

    # --- asyncio.BaseTransport ----------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            host, _, port = self.peer.rpartition(":")
            return (host, int(port)) if host and port.isdigit() else default
        if name == "trunk":
            return self.trunk
        if name == "sockname":
            transport = self.trunk.transport
            return transport.get_extra_info(name, default) if transport else default
        return default

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._closing or self._lost:
            return
        self._closing = True
        self._rbuf = None  # (no more reads are delivered after close)
        self._ask_flush()

    # --- reading ------------------------------------------------------------------------
    def is_reading(self) -> bool:
        return not (self._rpaused or self._closing or self._lost)

    def pause_reading(self) -> None:
        if not (self._closing or self._lost):
            self._rpaused = True

    def resume_reading(self) -> None:
        if not self._rpaused:
            return
        self._rpaused = False
        if self._rbuf or self._eof_pending:
            # Later in this pass, as a socket's next read would come: never inside the
            # caller. (`Detachable.attach` resumes reading *before* it replays the bytes
            # it stashed: delivering here put later bytes ahead of them.) Bytes that
            # arrive meanwhile queue behind these (`_on_data` sees `_rbuf`).
            self.trunk.loop.call_soon(self._read_backlog)

    def _read_backlog(self) -> None:
        if self._rpaused or self._closing or self._lost:
            return
        rbuf = self._rbuf
        if rbuf:
            self._rbuf = None
            data = rbuf[0] if len(rbuf) == 1 else b"".join(rbuf)
            self._deliver(data)
        if self._eof_pending and not self._rpaused and not self._rbuf:
            self._eof_pending = False
            self._deliver_eof()

    # --- writing ------------------------------------------------------------------------
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return self._wsize

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_asked and not self._lost:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing or self._lost or not data:
            return  # (asyncio drops writes to a closed transport too)
        self._wbuf.append(bytes(data) if type(data) is not bytes else data)
        self._wsize += len(data)
        if not self._marked:
            self._marked = True
            self.trunk._mark(self)
        if self._wsize > self._high and not self._wpaused:
            self._maybe_pause()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._lost or self._eof_asked:
            return
        self._eof_asked = True
        self._ask_flush()

    def abort(self) -> None:
        """Send what was written (as a socket's write would have), then RESET."""
        if self._lost:
            return
        self._closing = True
        trunk = self.trunk
        if self._wsize and self._credit:
            self._send(trunk._control)  # (in order: ahead of the RESET)
        if not (self._close_sent and self._eof_rcvd):
            trunk._emit(encode_record(RESET, self.id))
        self._finish(None)

    # --- the trunk's side ---------------------------------------------------------------
    def _ask_flush(self) -> None:
        if not self._marked and not self._lost:
            self._marked = True
            self.trunk._mark(self)

    def _maybe_pause(self) -> None:
        if self._wsize > self._high and not self._wpaused and not self._lost:
            self._wpaused = True
            try:
                self._protocol.pause_writing()
            except Exception:  # a protocol's bug must not break the trunk
                log.exception("pause_writing failed on %r", self)

    def _send(self, parts: list[bytes]) -> None:
        """Move pending bytes into DATA records in `parts`, as far as credit allows."""
        n = min(self._wsize, self._credit, MAX_DATA)
        wbuf = self._wbuf
        if n == self._wsize:
            payload = wbuf[0] if len(wbuf) == 1 else b"".join(wbuf)
            wbuf.clear()
        else:
            joined = b"".join(wbuf)
            payload = joined[:n]
            wbuf[:] = [joined[n:]]
        parts.append(header(DATA, self.id, n))
        parts.append(payload)
        self._credit -= n
        self._wsize -= n
        stats = self.trunk.stats
        stats.data_out += 1
        stats.records_out += 1

    def _take(self, parts: list[bytes]) -> None:
        """The trunk's flush: pending bytes as DATA (credit permitting), then CLOSE."""
        self._marked = False
        if self._lost:
            return
        while self._wsize and self._credit:
            self._send(parts)
        if self._wsize:
            if not self._stalled:
                self._stalled = True
                self.trunk.stats.credit_stalls += 1
        else:
            if (self._closing or self._eof_asked) and not self._close_sent:
                self._close_sent = True
                parts.append(encode_record(CLOSE, self.id))
                self.trunk.stats.records_out += 1
                if self._closing or self._eof_rcvd:
                    self._finish(None)
                    return
        if self._wpaused and self._wsize <= self._low:
            self._wpaused = False
            try:
                self._protocol.resume_writing()
            except Exception:
                log.exception("resume_writing failed on %r", self)

    def _on_data(self, payload: bytes) -> None:
        n = len(payload)
        self._window -= n
        if self._window < 0:
            raise TrunkFormatError(f"DATA beyond the credit granted on channel {self.id}")
        if self._eof_rcvd:
            raise TrunkFormatError(f"DATA after CLOSE on channel {self.id}")
        if self._closing:
            return  # we closed: late bytes are dropped (and never credited: no need)
        if self._rpaused or self._rbuf:
            if self._rbuf is None:
                self._rbuf = []
            self._rbuf.append(payload)
            return
        self._deliver(payload)

    def _deliver(self, data: bytes) -> None:
        try:
            self._protocol.data_received(data)
        except Exception:  # one stream's bug ends that stream, never the trunk
            log.exception("data_received failed on %r", self)
            self.abort()
            return
        self._consumed += len(data)
        if self._consumed >= GRANT_AT and not (self._closing or self._eof_rcvd or self._lost):
            self.trunk._emit(credit_record(self.id, self._consumed))
            self._window += self._consumed
            self._consumed = 0

    def _on_credit(self, amount: int) -> None:
        self._credit += amount
        if self._credit > WINDOW:
            raise TrunkFormatError(f"CREDIT beyond the window on channel {self.id}")
        if self._wsize:
            self._stalled = False
            self._ask_flush()

    def _on_close(self) -> None:
        if self._eof_rcvd:
            raise TrunkFormatError(f"a second CLOSE on channel {self.id}")
        self._eof_rcvd = True
        if self._closing:
            if self._close_sent:
                self._finish(None)
            return
        if self._rbuf:
            self._eof_pending = True
            return
        self._deliver_eof()

    def _deliver_eof(self) -> None:
        try:
            keep_open = self._protocol.eof_received()
        except Exception:
            log.exception("eof_received failed on %r", self)
            self.abort()
            return
        if self._lost:
            return
        if self._close_sent:  # both halves closed: the channel is done
            self._finish(None)
        elif not keep_open:
            self.close()

    def _on_reset(self, reason: str) -> None:
        why = f"channel reset by the peer: {reason}" if reason else "channel reset by the peer"
        self._finish(ConnectionResetError(why))

    def _on_trunk_lost(self, exc: BaseException | None) -> None:
        self._finish(exc if exc is not None else ConnectionResetError("trunk closed"))

    def _finish(self, exc: BaseException | None) -> None:
        """The channel is over: forget it, and tell the protocol (next pass, as asyncio)."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._wbuf = []
        self._wsize = 0
        self._rbuf = None
        self.trunk._forget(self)
        self.trunk.loop.call_soon(self._call_lost, exc)

    def _call_lost(self, exc: BaseException | None) -> None:
        # (the protocol at call time: a detach may have replaced it since `_finish`)
        protocol = self._protocol
        if protocol is not None:
            protocol.connection_lost(exc)
