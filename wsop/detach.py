"""Hand a websockets connection's socket to a plain asyncio protocol after the handshake.

Both servers let websockets do the handshakes (HTTP parsing, the upgrade checks, the
admin endpoints) and then take the socket for a data phase of their own: the LB relays
raw bytes, the sidecar runs websockets' sans-I/O protocol in `data_received`. Once a
handshake's HTTP head has been read, a `Detachable` connection stops feeding bytes to
websockets' frame parser and *stashes* them instead: no frame of the data phase is ever
parsed or queued by websockets, so `detach` can give the transport, stash first, to
another protocol without losing or reordering a byte (and without a parser holding half a
header). When the server decides not to take the socket after all (no sidecar, SIGTERM,
a refused user), `resume` feeds the stash back and websockets closes the connection as
usual.

The stash is bounded: past `STASH_LIMIT` bytes the socket stops being read until the
data phase begins (a client that pushes megabytes before it was even accepted only fills
its own kernel buffers, not the server's memory).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

_SCANNING: Final = 0  # reading the HTTP head: websockets gets every byte
_STASHING: Final = 1  # head read: bytes are the relay's, kept for `detach`
_PASSING: Final = 2  # not relaying after all (or a refused handshake): websockets again
_DETACHED: Final = 3  # the transport belongs to a raw protocol now
STASH_LIMIT: Final = 256 * 1024


class Detachable:
    """Mixin for a websockets connection (an asyncio protocol) that can be detached."""

    _mode = _SCANNING
    _tail = b""  # the last 3 bytes of the head so far, to find a split b"\r\n\r\n"
    _stash: bytearray | None = None
    _eof = False
    _protocol: asyncio.Protocol | None = None
    _reading_paused = False
    lost = False
    """The peer went away while the bytes were being stashed."""

    def _relayable(self) -> bool:
        """Whether the head just read opens a connection whose data phase is taken over."""
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        mode = self._mode
        if mode == _STASHING:
            assert self._stash is not None
            self._stash += data
            if len(self._stash) > STASH_LIMIT and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()  # type: ignore[attr-defined]
            return
        if mode != _SCANNING:
            super().data_received(data)  # type: ignore[misc]
            return
        buf = self._tail + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._tail = buf[-3:]
            super().data_received(data)  # type: ignore[misc]
            return
        cut = end + 4 - len(self._tail)
        super().data_received(data[:cut])  # type: ignore[misc]
        if self._relayable():
            self._mode = _STASHING
            self._stash = bytearray(data[cut:])
        else:
            self._mode = _PASSING
            if cut < len(data):
                super().data_received(data[cut:])  # type: ignore[misc]

    def eof_received(self) -> bool | None:
        if self._mode == _STASHING:
            self._eof = True
            return None  # asyncio closes the transport; connection_lost follows
        return super().eof_received()  # type: ignore[misc,no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._mode == _STASHING:
            self.lost = True
        super().connection_lost(exc)  # type: ignore[misc]

    def resume(self) -> None:
        """Give the stashed bytes back to websockets (to close it with its own close())."""
        if self._mode != _STASHING:
            return
        self._mode = _PASSING
        stash, self._stash = self._stash, None
        if self._reading_paused:
            self._reading_paused = False
            if not self.lost:
                self.transport.resume_reading()  # type: ignore[attr-defined]
        if stash and not self.lost:
            super().data_received(bytes(stash))  # type: ignore[misc]

    def detach(self, protocol: asyncio.Protocol) -> None:
        """`attach` then `replay`: hand the transport to `protocol` for good."""
        self.attach(protocol)
        self.replay()

    def attach(self, protocol: asyncio.Protocol) -> None:
        """Make `protocol` the transport's protocol (`connection_made`); websockets never
        sees the socket again. Bytes already stashed wait for `replay`, so that a relay
        can attach both of its sockets before either one's bytes flow to the other.

        If the peer is already gone, `protocol` gets no `connection_made` (uvloop's
        closed transport raises on `set_write_buffer_limits`), only the stash and
        `connection_lost` from `replay`: its owner must still hear that it ended."""
        assert self._mode == _STASHING, "attach() after a relayable handshake only"
        self._mode = _DETACHED
        self._protocol = protocol
        keepalive = getattr(self, "keepalive_task", None)
        if keepalive is not None:  # its pings would be written into the new protocol's stream
            keepalive.cancel()
        if self.lost:
            return
        transport: asyncio.Transport = self.transport  # type: ignore[attr-defined]
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._reading_paused:
            self._reading_paused = False
            if not self.lost and not transport.is_closing():
                transport.resume_reading()

    def replay(self) -> None:
        """Feed the stash to the attached protocol, then `connection_lost` if the peer
        is already gone."""
        protocol, self._protocol = self._protocol, None
        assert protocol is not None, "replay() after attach() only"
        stash, self._stash = self._stash, None
        if stash:
            protocol.data_received(bytes(stash))
        if self.lost:
            protocol.connection_lost(None)
        elif self._eof:
            self.transport.close()  # type: ignore[attr-defined]

    async def close(self, *args: Any, **kwargs: Any) -> None:
        if self._mode == _DETACHED:
            return  # the relay owns the socket; websockets' handler exit must not touch it
        self.resume()
        await super().close(*args, **kwargs)  # type: ignore[misc]
