"""The one set of fakes the tests share: a transport that records what is written to it
(and tells its protocol when it is closed, as asyncio does, once one is set), and a
handshaken connection as the LB's handshake leaves it."""

from __future__ import annotations

import asyncio


class FakeTransport:
    """Records writes, pauses, half- and full closes. Once a `protocol` is set, a close
    or an abort reports `connection_lost` to it on the next loop pass, like asyncio."""

    def __init__(self, strict: bool = False) -> None:
        self.written = bytearray()
        self.closed = self.aborted = self.eof_written = False
        self.paused = False
        self.high: int | None = None
        self.protocol: asyncio.Protocol | None = None
        self.strict = strict
        """Fail a write after close (the LB must never write to a closed side)."""
        self.buffered = 0
        """What `get_write_buffer_size` says (a test sets it: nothing is really queued)."""
        self.extra: dict[str, object] = {}
        """What `get_extra_info` answers (e.g. "sslcontext" for a TLS transport)."""

    @property
    def closing(self) -> bool:
        return self.closed or self.aborted

    @property
    def reading(self) -> bool:
        return not self.paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high

    def write(self, data: bytes) -> None:
        assert not (self.strict and self.closing), "write after close"
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.extra.get(name, default)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write_eof(self) -> None:
        assert not (self.strict and self.closing), "write_eof after close"
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._lose()
        self.closed = True

    def abort(self) -> None:
        self._lose()
        self.aborted = True

    def _lose(self) -> None:
        if not self.closing and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakeConn:
    """A handshaken connection as `wsop.lb.handshake` leaves it: ready to `detach`."""

    def __init__(self) -> None:
        self.transport = FakeTransport(strict=True)
        self.closed_with: tuple[int, str] | None = None

    def attach(self, protocol: asyncio.Protocol) -> None:
        self.transport.protocol = protocol
        protocol.connection_made(self.transport)  # type: ignore[arg-type]

    def replay(self) -> None:
        pass

    detach = attach

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)
