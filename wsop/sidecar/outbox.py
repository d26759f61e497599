"""Writes to client connections, coalesced: one `write` per connection per loop pass.

A sidecar under load writes several frames to the same connection in one pass of the
event loop (the deliveries of a peer batch, an ack and a delivery to a pipelining
client). `websockets.broadcast` makes one `write` syscall per frame — half of the
sidecar's CPU in profiles. Here frames are framed into each connection's protocol
buffer at once and flushed by one callback at the end of the pass, so the kernel sees
one write per connection instead of one per frame. Order is preserved: any direct
`await conn.send(...)` flushes the pending frames first, in sequence.

The frame itself is built here, not by websockets' `send_text`, whenever that would give
the same bytes (a server's frames are unmasked, and ours negotiate no extension): one
header and one concatenation instead of a `Frame` and its general `serialize` — and one
frame for every recipient of a shared payload. Anything else (a client-side or
extended protocol, a fragmented send in progress) goes through `send_text`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from websockets.protocol import SERVER, State

OPEN = State.OPEN

log = logging.getLogger("wsop.sidecar")


class Outbox:
    def __init__(self) -> None:
        self._dirty: set[Any] = set()
        self._scheduled = False

    def send(self, conns: Iterable[Any], text: str) -> int:
        """Queue `text` on every open connection; returns how many took it."""
        return self.send_bytes(conns, text.encode())

    def send_bytes(self, conns: Iterable[Any], data: bytes) -> int:
        """`send` for a frame already encoded (one encode for many recipients)."""
        taken = 0
        frame: bytes | None = None
        for conn in conns:
            protocol = conn.protocol
            if protocol.state is not OPEN or _sending_fragments(conn):
                continue
            if _plain(protocol):
                frame = frame or text_frame(data)
                self._queue(conn, protocol, frame)
            else:
                protocol.send_text(data)
                self.mark(conn)
            taken += 1
        return taken

    def send_one(self, conn: Any, data: bytes) -> bool:
        """`send_bytes` to one connection (a frame of its own: e.g. with its offset)."""
        protocol = conn.protocol
        if protocol.state is not OPEN or _sending_fragments(conn):
            return False
        if _plain(protocol):
            self._queue(conn, protocol, text_frame(data))
        else:
            protocol.send_text(data)
            self.mark(conn)
        return True

    def _queue(self, conn: Any, protocol: Any, frame: bytes) -> None:
        """Straight to a transport that coalesces its writes itself (`coalescing`: a trunk
        channel, sent with every other channel's in one socket write at the end of the
        pass) when nothing waits in the protocol ahead of it; else behind what waits."""
        if protocol.writes or not getattr(conn, "coalescing", False):
            protocol.writes.append(frame)
            self.mark(conn)
        else:
            conn.transport.write(frame)

    def mark(self, conn: Any) -> None:
        """Flush `conn` at the end of this pass (its protocol queued frames of its own)."""
        self._dirty.add(conn)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            try:
                conn.send_data()
            except Exception as exc:  # a connection dying mid-write: its handler cleans up
                log.debug("write to a closing connection failed: %s", exc)


def text_frame(data: bytes) -> bytes:
    """A final, unmasked text frame: what `send_text` queues on a plain server protocol."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + data
    return b"\x81\x7f" + n.to_bytes(8, "big") + data


def _plain(protocol: Any) -> bool:
    """`send_text` would queue exactly `text_frame(data)` (a fragmented message it
    would refuse: `_sending_fragments` already left those out)."""
    return (
        protocol.side is SERVER
        and not protocol.extensions
        and not protocol.debug
        and not protocol.expect_continuation_frame
    )


def _sending_fragments(conn: Any) -> bool:
    """A fragmented send in progress must not be interleaved (websockets ≥ 15 names)."""
    return (
        getattr(conn, "send_in_progress", None) is not None
        or getattr(conn, "fragmented_send_waiter", None) is not None
    )
