"""A trunk: the asyncio protocol on one LB ↔ sidecar socket, multiplexing channels.

Reading: one `data_received` decodes every record in the read and hands each DATA
payload to its channel's protocol in the same pass — a team message to 50 clients
behind one LB arrives as one read. Writing: channels queue bytes (`Channel.write`) and
the trunk sends all of them at the end of the loop pass, one DATA record per channel and
one socket write in all (`_flush`). Control records (OPEN, CREDIT, RESET, PING…) go out
in that same write, ahead of the DATA.

What the peer may not do, and what happens when it does (the trunk is closed with a
GOAWAY naming the fault, its channels end as if their sockets were reset, and nothing
is handed to any other channel): a malformed record (`codec.TrunkFormatError`), a record
for a channel that was never opened, an OPEN from the sidecar or of an id already used,
DATA beyond the credit granted or after the channel's CLOSE, a credit past the window.
A record for a channel that *was* open and is gone now is late, not wrong (the two ends
close independently): it is counted and dropped.

`Trunk` is both ends' base; `wsop.lb.trunks` (the LB: opens channels, pings) and
`wsop.trunk.serving` (the sidecar: accepts them) add their side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from wsop.trunk.channel import Channel
from wsop.trunk.codec import (
    CLOSE,
    CREDIT,
    DATA,
    GOAWAY,
    MAX_CHANNEL,
    OPEN,
    PING,
    PING_SIZE,
    PONG,
    RESET,
    TrunkDecoder,
    TrunkFormatError,
    credit_amount,
    record,
    text,
)

log = logging.getLogger("wsop.trunk")

WRITE_HIGH: Final = 1024 * 1024
"""Above this many unsent bytes in the trunk's socket, channels keep their bytes (and
count them in their own buffers, so each protocol sees its own backpressure)."""
WRITE_LOW: Final = 256 * 1024
PING_INTERVAL_S: Final = 10.0
"""The LB pings each trunk this often; nothing back for one more interval: it is dead."""
IDLE_LIMIT_S: Final = 4 * PING_INTERVAL_S
"""A sidecar drops a trunk it has heard nothing on (not even a ping) for this long."""


@dataclass
class TrunkStats:
    """Counters of all the trunks of one process (ints: bumped on the hot path)."""

    opened: int = 0
    """Trunks opened (each end counts its own)."""
    open: int = 0
    channels_opened: int = 0
    writes: int = 0
    records_out: int = 0
    data_out: int = 0
    bytes_out: int = 0
    reads: int = 0
    records_in: int = 0
    bytes_in: int = 0
    credit_stalls: int = 0
    """Times a channel had bytes to send and no credit (its peer's reader is slow)."""
    late_records: int = 0
    errors: int = 0
    """Trunks closed for a peer's protocol violation."""


class Trunk(asyncio.Protocol):
    """Records in, records out (see the module docstring); subclasses say who opens."""

    def __init__(self, stats: TrunkStats, name: str = "") -> None:
        self.stats = stats
        self.name = name
        self.channels: dict[int, Channel] = {}
        self.max_channel = 0
        """The highest channel id opened so far: records for higher ids are an error,
        for lower ones that are gone, late."""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_event_loop()
        self.closed = False
        self.goaway: str | None = None
        """Why the trunk is closing: the peer's GOAWAY reason, or our own."""
        self._decoder = TrunkDecoder()
        self._control: list[bytes] = []
        self._dirty: list[Channel] = []
        self._scheduled = False
        self._paused = False
        self._last_read = time.monotonic()
        self._lost: asyncio.Future[None] | None = None
        self.gone = False
        """The socket is closed (`connection_lost` ran)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {len(self.channels)} channels>"

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        if not transport.is_closing():
            self.transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)  # type: ignore[union-attr]
        self.stats.opened += 1
        self.stats.open += 1
        self._last_read = time.monotonic()
        if self._control or self._dirty:
            self._schedule()

    def data_received(self, data: bytes) -> None:
        stats = self.stats
        stats.reads += 1
        stats.bytes_in += len(data)
        self._last_read = time.monotonic()
        if self.closed:
            return
        try:
            records = self._decoder.feed(data)
            stats.records_in += len(records)
            channels = self.channels
            for kind, channel, payload in records:
                if kind == DATA:
                    chan = channels.get(channel)
                    if chan is not None:
                        chan._on_data(payload)
                    else:
                        self._not_open(kind, channel)
                else:
                    self._record(kind, channel, payload)
                if self.closed:
                    return
        except TrunkFormatError as exc:
            self.fail(str(exc))

    def eof_received(self) -> bool | None:
        return None  # the peer is gone: close, connection_lost ends every channel

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._dirty:
            self._schedule()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gone = True
        self.stats.open -= 1
        why = exc or ConnectionResetError(f"trunk {self.name} closed: {self.goaway or 'lost'}")
        for chan in list(self.channels.values()):
            chan._on_trunk_lost(why)
        self.channels.clear()
        self._dirty.clear()
        self._control.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self.trunk_lost(exc)

    # --- hooks --------------------------------------------------------------------------
    def on_open(self, channel: int, peer: str) -> None:
        """The peer opened a channel (only the LB does: the sidecar's side overrides)."""
        raise TrunkFormatError(f"OPEN of channel {channel} from the accepting side")

    def trunk_lost(self, exc: Exception | None) -> None:
        """The socket is closed (every channel has been told)."""

    def pong(self) -> None:
        """A PONG arrived (the LB's side times its pings)."""

    # --- records ------------------------------------------------------------------------
    def _record(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == CREDIT:
            chan = self.channels.get(channel)
            if chan is None:
                self._not_open(kind, channel)
            else:
                chan._on_credit(credit_amount(payload))
        elif kind == OPEN:
            if channel <= self.max_channel:
                raise TrunkFormatError(f"OPEN of channel {channel}: ids only grow")
            self.on_open(channel, payload.decode("utf-8", "replace"))
        elif kind in (CLOSE, RESET):
            chan = self.channels.get(channel)
            if chan is None:
                self._not_open(kind, channel)
            elif kind == CLOSE:
                chan._on_close()
            else:
                chan._on_reset(payload.decode("utf-8", "replace"))
        elif kind == PING:
            self._emit(record(PONG, 0, payload))
        elif kind == PONG:
            self.pong()
        elif kind == GOAWAY:
            self.goaway = payload.decode("utf-8", "replace") or "goaway"
            log.info("trunk %s: the peer closes it (%s)", self.name, self.goaway)
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _not_open(self, kind: int, channel: int) -> None:
        if channel > self.max_channel:
            raise TrunkFormatError(f"a record for channel {channel}, which was never opened")
        self.stats.late_records += 1

    # --- channels -----------------------------------------------------------------------
    def add_channel(self, channel: int, protocol: asyncio.BaseProtocol, peer: str = "") -> Channel:
        """Register a channel with its protocol (`connection_made` is the caller's)."""
        chan = Channel(self, channel, peer)
        chan._protocol = protocol
        self.channels[channel] = chan
        self.max_channel = channel
        self.stats.channels_opened += 1
        return chan

    def _forget(self, chan: Channel) -> None:
        if self.channels.get(chan.id) is chan:
            del self.channels[chan.id]

    # --- writing ------------------------------------------------------------------------
    def _mark(self, chan: Channel) -> None:
        self._dirty.append(chan)
        if not self._scheduled:
            self._schedule()

    def _emit(self, rec: bytes) -> None:
        self._control.append(rec)
        self.stats.records_out += 1
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        if self._scheduled or self.transport is None:
            return
        self._scheduled = True
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        parts = self._control
        self._control = []
        if not self._paused and self._dirty:
            dirty, self._dirty = self._dirty, []
            for chan in dirty:
                chan._take(parts)
        if parts:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            transport.write(data)
            self.stats.writes += 1
            self.stats.bytes_out += len(data)

    def fail(self, reason: str) -> None:
        """The peer broke the protocol: GOAWAY with the reason, then close the socket."""
        if self.closed:
            return
        self.stats.errors += 1
        log.warning("trunk %s: %s; closing it", self.name, reason)
        self.close(f"protocol error: {reason}")

    def close(self, reason: str = "closing") -> None:
        """GOAWAY, then close the socket (after what is queued); channels end with it."""
        if self.closed:
            return
        self.closed = True
        self.goaway = reason
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._flush()  # what the channels wrote this pass still goes out
        transport.write(record(GOAWAY, 0, text(reason)))
        transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    @property
    def silent_for(self) -> float:
        """Seconds since anything was read from the peer."""
        return time.monotonic() - self._last_read

    async def wait_closed(self) -> None:
        if self.gone:
            return
        if self._lost is None:
            self._lost = self.loop.create_future()
        await asyncio.shield(self._lost)


class OpeningTrunk(Trunk):
    """The end that opens channels (the LB): ids 1, 2, 3… and a ping every interval."""

    def __init__(
        self,
        stats: TrunkStats,
        name: str = "",
        on_lost: Callable[[OpeningTrunk], None] | None = None,
    ) -> None:
        super().__init__(stats, name)
        self._on_lost = on_lost
        self._ping_timer: asyncio.TimerHandle | None = None
        self.retiring = False
        """No new channels (its ids ran out, or its sidecar left): closed once empty."""
        self.url = ""
        """The sidecar's base url (the LB's pool keys its trunks by it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._ping_timer = self.loop.call_later(PING_INTERVAL_S, self._ping)

    @property
    def usable(self) -> bool:
        return not (self.closed or self.retiring) and self.max_channel < MAX_CHANNEL

    def open_channel(self, protocol: asyncio.BaseProtocol, peer: str = "") -> Channel:
        """A new channel with `protocol` on it (its `connection_made` is called here)."""
        if not self.usable:
            raise ConnectionResetError(f"trunk {self.name} takes no new channels")
        channel = self.max_channel + 1
        self._emit(record(OPEN, channel, text(peer)))
        chan = self.add_channel(channel, protocol, peer)
        protocol.connection_made(chan)
        if channel == MAX_CHANNEL:
            self.retire()
        return chan

    def retire(self) -> None:
        """Take no new channels; close once the last one has ended."""
        self.retiring = True
        if not self.channels:
            self.close("retired")

    def _forget(self, chan: Channel) -> None:
        super()._forget(chan)
        if self.retiring and not self.channels and not self.closed:
            self.loop.call_soon(self.close, "retired")  # (after this pass's records)

    def _ping(self) -> None:
        if self.gone:
            return
        if self.silent_for > 2 * PING_INTERVAL_S:  # (a PONG would have come long ago)
            log.warning("trunk %s: no answer in %.0f s; dropping it", self.name, self.silent_for)
            self.abort()
            return
        self._emit(record(PING, 0, b"\x00" * PING_SIZE))
        self._ping_timer = self.loop.call_later(PING_INTERVAL_S, self._ping)

    def trunk_lost(self, exc: Exception | None) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        if self._on_lost is not None:
            self._on_lost(self)
