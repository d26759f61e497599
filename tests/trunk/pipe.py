"""Two trunk ends joined by in-memory transports, pumped by hand: the pure tests of
channels, credit and the trunk's refusals run on it without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from wsop.trunk.mux import OpeningTrunk, Trunk, TrunkStats
from wsop.trunk.serving import AcceptingTrunk


class Wire:
    """A transport that keeps what its trunk writes until `take`."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = self.aborted = False
        self.protocol: asyncio.Protocol | None = None
        self.writes = 0

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data
        self.writes += 1

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 1) if name == "sockname" else default

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self._lose(closed=True)

    def abort(self) -> None:
        self._lose(aborted=True)

    def _lose(self, **how: bool) -> None:
        if not self.is_closing() and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
        for key, value in how.items():
            setattr(self, key, value)


class Recorder(asyncio.Protocol):
    """A channel's protocol that records everything it is told."""

    def __init__(self, keep_open_on_eof: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.eof = False
        self.lost: list[BaseException | None] = []
        self.write_paused = False
        self.keep_open_on_eof = keep_open_on_eof

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return self.keep_open_on_eof

    def connection_lost(self, exc) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        assert not self.write_paused
        self.write_paused = True

    def resume_writing(self) -> None:
        assert self.write_paused
        self.write_paused = False


class Pipe:
    """`lb` opens channels, `sidecar` accepts them with `Recorder`s (in `accepted`)."""

    def __init__(self, accepting: bool = True) -> None:
        self.stats = TrunkStats()
        self.accepted: list[Recorder] = []
        self.lb = OpeningTrunk(self.stats, "lb")
        self.sidecar = AcceptingTrunk(
            self.stats, "sidecar", self._accept, accepting=lambda: accepting
        )
        self.lb_wire, self.sidecar_wire = Wire(), Wire()
        for trunk, wire in ((self.lb, self.lb_wire), (self.sidecar, self.sidecar_wire)):
            wire.protocol = trunk
            trunk.connection_made(wire)

    def _accept(self) -> Recorder:
        rec = Recorder()
        self.accepted.append(rec)
        return rec

    async def turn(self, cuts: Iterable[int] = ()) -> None:
        """Let both ends flush, then deliver each side's bytes to the other (cut into
        reads at `cuts`), twice: answers (credit, PONG) get through too."""
        for _ in range(2):
            await asyncio.sleep(0)
            self.feed(self.sidecar, self.lb_wire.take(), cuts)
            self.feed(self.lb, self.sidecar_wire.take(), cuts)
        await asyncio.sleep(0)

    @staticmethod
    def feed(trunk: Trunk, data: bytes, cuts: Iterable[int] = ()) -> None:
        last = 0
        for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
            if cut > last and not trunk.gone:
                trunk.data_received(data[last:cut])
            last = cut
