"""The sidecar's outbox: frames to one connection in one loop pass leave in one write, in order."""

from __future__ import annotations

import asyncio

from websockets.protocol import State

from wsop.sidecar.outbox import Outbox


class FakeProtocol:
    def __init__(self, state: State = State.OPEN) -> None:
        self.state = state
        self.pending: list[bytes] = []

    def send_text(self, data: bytes) -> None:
        self.pending.append(data)


class FakeConn:
    def __init__(self, state: State = State.OPEN) -> None:
        self.protocol = FakeProtocol(state)
        self.send_in_progress = None
        self.writes: list[list[bytes]] = []

    def send_data(self) -> None:
        self.writes.append(self.protocol.pending)
        self.protocol.pending = []


def test_one_write_per_connection_per_pass() -> None:
    async def scenario() -> tuple[FakeConn, FakeConn, FakeConn]:
        box = Outbox()
        a, b, closed = FakeConn(), FakeConn(), FakeConn(State.CLOSING)
        assert box.send([a, b, closed], "m1") == 2
        box.send([a], "ack")
        box.send([a, b], "m2")
        assert a.writes == []  # nothing written before the pass ends
        await asyncio.sleep(0)
        box.send([b], "next pass")
        await asyncio.sleep(0)
        return a, b, closed

    a, b, closed = asyncio.run(scenario())
    assert a.writes == [[b"m1", b"ack", b"m2"]]
    assert b.writes == [[b"m1", b"m2"], [b"next pass"]]
    assert closed.writes == [] and closed.protocol.pending == []
