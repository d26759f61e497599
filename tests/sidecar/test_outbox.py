"""The sidecar's outbox: frames to one connection in one loop pass leave in one write, in order."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from wsop.sidecar.outbox import Outbox, text_frame


class FakeProtocol:
    side = None  # not a websockets server protocol: frames go through `send_text`

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


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_is_what_websockets_serialises(size: int) -> None:
    data = b"x" * size
    assert text_frame(data) == Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])


class RealConn:
    """A websockets server protocol in OPEN state, as a sidecar session holds one."""

    def __init__(self, deflate: bool = False) -> None:
        self.protocol = ServerProtocol()
        self.protocol.state = State.OPEN
        if deflate:
            self.protocol.extensions = [PerMessageDeflate(False, False, 15, 15)]
        self.send_in_progress = None

    def send_data(self) -> None:
        pass


@given(st.lists(st.text(max_size=300), min_size=1, max_size=5), st.booleans())
def test_queued_bytes_are_those_send_text_would_queue(texts: list[str], deflate: bool) -> None:
    """The outbox builds frames itself where that changes nothing on the wire: a plain
    server protocol; an extended one (here: permessage-deflate) gets `send_text`."""

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        box, ours, theirs = Outbox(), RealConn(deflate), RealConn(deflate)
        for i, text in enumerate(texts):
            data = text.encode()
            if i % 2:
                box.send_bytes([ours], data)
            else:
                box.send_one(ours, data)
            theirs.protocol.send_text(data)
        return ours.protocol.data_to_send(), theirs.protocol.data_to_send()

    ours, theirs = asyncio.run(scenario())
    assert b"".join(ours) == b"".join(theirs)


class Recording:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_a_coalescing_transport_is_written_at_once_unless_frames_wait_ahead() -> None:
    """On a trunk channel (which sends every channel's bytes in one write at the end of
    the pass) a frame goes straight to the transport — but never ahead of frames the
    protocol still holds (a pong, or a frame queued before the session was attached)."""

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        box, conn = Outbox(), RealConn()
        conn.transport = Recording()  # type: ignore[attr-defined]
        conn.coalescing = True  # type: ignore[attr-defined]
        box.send_one(conn, b"now")
        assert conn.transport.written == [text_frame(b"now")]  # type: ignore[attr-defined]
        conn.protocol.send_text(b"waiting")  # (a frame the protocol queued itself)
        box.send_bytes([conn], b"behind")
        return conn.transport.written, conn.protocol.data_to_send()  # type: ignore[attr-defined]

    written, queued = asyncio.run(scenario())
    assert written == [text_frame(b"now")]
    assert queued == [text_frame(b"waiting"), text_frame(b"behind")]
