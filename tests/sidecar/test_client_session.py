"""`ClientSession`: websockets' sans-I/O protocol under an asyncio.Protocol, driven with
real masked frames and a recording transport (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from websockets.frames import BINARY, CLOSE, CONT, PING, PONG, TEXT, Close, Frame
from websockets.protocol import State
from websockets.server import ServerProtocol

from tests.fakes import FakeTransport as Transport
from wsop.auth import Identity
from wsop.sidecar import client as client_module
from wsop.sidecar.client import SLOW_CLIENT_S, ClientSession
from wsop.sidecar.outbox import Outbox


class Owner:
    """Handles b"slow…" frames in a task (like team messages), the rest at once."""

    def __init__(self) -> None:
        self.outbox = Outbox()
        self.handled: list[bytes] = []
        self.gone = 0
        self.too_slow = 0
        self.release = asyncio.Event()

    def client_frame(
        self, session: ClientSession, message: str | bytes
    ) -> Coroutine[Any, Any, None] | None:
        data = message.encode() if isinstance(message, str) else message  # text is a str
        if data.startswith(b"slow"):
            return self._slow(session, data)
        self.handled.append(data)
        self.outbox.send((session,), f"ack {data.decode()}")
        return None

    async def _slow(self, session: ClientSession, data: bytes) -> None:
        await self.release.wait()
        self.handled.append(data)

    slow_client_s = SLOW_CLIENT_S

    def client_gone(self, session: ClientSession) -> None:
        self.gone += 1

    def client_too_slow(self, session: ClientSession) -> None:
        self.too_slow += 1


def client_bytes(*frames: Frame) -> bytes:
    return b"".join(f.serialize(mask=True) for f in frames)


def server_frames(data: bytes) -> list[Frame]:
    """Parse what the session wrote, as a client would."""
    from websockets.client import ClientProtocol

    client = ClientProtocol("ws://x/ws", state=State.OPEN)  # type: ignore[arg-type]
    client.receive_data(bytes(data))
    return client.events_received()


def make(max_size: int = 1 << 16) -> tuple[ClientSession, Transport, Owner]:
    owner = Owner()
    protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
    session = ClientSession(protocol, Identity("t", 1), 1, owner)
    transport = Transport()
    session.connection_made(transport)  # type: ignore[arg-type]
    return session, transport, owner


def test_messages_are_handled_and_replies_leave_in_one_write_per_pass() -> None:
    async def scenario() -> tuple[Transport, Owner]:
        session, transport, owner = make()
        session.data_received(client_bytes(Frame(TEXT, b"a"), Frame(BINARY, b"b")))
        assert transport.written == b""  # written at the end of the pass, not per frame
        await asyncio.sleep(0)
        return transport, owner

    transport, owner = asyncio.run(scenario())
    assert owner.handled == [b"a", b"b"]
    assert [f.data for f in server_frames(transport.written)] == [b"ack a", b"ack b"]


def test_fragments_are_assembled_and_pings_answered() -> None:
    async def scenario() -> tuple[Transport, Owner]:
        session, transport, owner = make()
        session.data_received(
            client_bytes(
                Frame(TEXT, b"he", fin=False),
                Frame(PING, b"p"),  # control frames may sit between fragments
                Frame(CONT, b"ll", fin=False),
                Frame(CONT, b"o"),
            )
        )
        await asyncio.sleep(0)
        return transport, owner

    transport, owner = asyncio.run(scenario())
    assert owner.handled == [b"hello"]
    frames = server_frames(transport.written)
    assert [(f.opcode, f.data) for f in frames] == [(PONG, b"p"), (TEXT, b"ack hello")]


def test_frames_behind_a_slow_one_wait_and_keep_their_order() -> None:
    async def scenario() -> Owner:
        session, _, owner = make()
        session.data_received(client_bytes(Frame(TEXT, b"1"), Frame(TEXT, b"slow2")))
        session.data_received(client_bytes(Frame(TEXT, b"3"), Frame(TEXT, b"4")))
        await asyncio.sleep(0.01)
        assert owner.handled == [b"1"]  # 3 and 4 wait behind the unfinished slow2
        owner.release.set()
        await asyncio.sleep(0.01)
        return owner

    assert asyncio.run(scenario()).handled == [b"1", b"slow2", b"3", b"4"]


def test_a_long_backlog_pauses_reading_until_it_drains() -> None:
    async def scenario() -> tuple[Transport, list[bool]]:
        session, transport, owner = make()
        seen = []
        session.data_received(client_bytes(Frame(TEXT, b"slow")))
        session.data_received(client_bytes(*(Frame(TEXT, b"x") for _ in range(100))))
        seen.append(transport.paused)
        owner.release.set()
        await asyncio.sleep(0.01)
        seen.append(transport.paused)
        return transport, seen

    _, seen = asyncio.run(scenario())
    assert seen == [True, False]


def test_close_frame_is_answered_and_the_server_closes_its_half_of_tcp() -> None:
    async def scenario() -> tuple[Transport, Owner, ClientSession, bool | None]:
        session, transport, owner = make()
        session.data_received(client_bytes(Frame(CLOSE, Close(1000, "bye").serialize())))
        await asyncio.sleep(0)
        assert transport.eof_written and not transport.closed  # FIN, and reading on
        keep_open = session.eof_received()  # the client's FIN: asyncio closes the socket
        session.connection_lost(None)
        session.connection_lost(None)  # asyncio may report twice: cleaned up once
        return transport, owner, session, keep_open

    transport, owner, session, keep_open = asyncio.run(scenario())
    frames = server_frames(transport.written)
    assert [f.opcode for f in frames] == [CLOSE]
    assert Close.parse(frames[0].data).code == 1000
    assert not keep_open and owner.gone == 1 and not transport.aborted
    assert session.protocol.state is State.CLOSED


def test_oversize_frame_fails_the_connection_with_1009() -> None:
    async def scenario() -> tuple[Transport, Owner]:
        session, transport, owner = make(max_size=10)
        session.data_received(client_bytes(Frame(TEXT, b"x" * 11)))
        await asyncio.sleep(0)
        return transport, owner

    transport, owner = asyncio.run(scenario())
    assert owner.handled == []
    frames = server_frames(transport.written)
    assert Close.parse(frames[0].data).code == 1009
    assert transport.eof_written and not transport.closed  # half-closed: see the next test


def test_after_failing_the_server_reads_on_until_the_client_closes_or_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing the socket with the rest of an oversize frame unread would send an RST,
    which can overtake the close frame; so the server half-closes, discards what still
    comes, and aborts only if the client never closes its half."""
    monkeypatch.setattr(client_module, "CLOSE_TIMEOUT_S", 0.05)

    async def scenario() -> tuple[Transport, Owner, list[bool]]:
        session, transport, owner = make(max_size=10)
        session.data_received(client_bytes(Frame(TEXT, b"x" * 11000))[:3000])
        await asyncio.sleep(0)
        seen = [transport.eof_written, transport.aborted]
        session.data_received(b"x" * 8000 + client_bytes(Frame(TEXT, b"late")))  # discarded
        await asyncio.sleep(0.02)
        seen.append(transport.aborted)
        await asyncio.sleep(0.1)  # no FIN from the client within the timeout
        seen.append(transport.aborted)
        return transport, owner, seen

    transport, owner, seen = asyncio.run(scenario())
    assert seen == [True, False, False, True]
    assert owner.handled == [] and [f.opcode for f in server_frames(transport.written)] == [CLOSE]


def test_a_failing_handler_answers_internal_error_and_keeps_the_connection() -> None:
    async def scenario() -> tuple[Transport, Owner]:
        session, transport, owner = make()

        def boom(session: ClientSession, data: bytes) -> None:
            raise RuntimeError("bug")

        owner.client_frame = boom  # type: ignore[method-assign]
        session.data_received(client_bytes(Frame(TEXT, b"a")))
        await asyncio.sleep(0)
        return transport, owner

    transport, _ = asyncio.run(scenario())
    frames = server_frames(transport.written)
    assert b'"code":"internal"' in frames[0].data
    assert not transport.closed


def test_keepalive_ping_then_silence_is_detected() -> None:
    async def scenario() -> tuple[Transport, bool, bool]:
        session, transport, _ = make()
        session.ping()
        due = session.pong_due
        session.data_received(client_bytes(Frame(PONG, b"")))
        return transport, due, session.pong_due

    transport, due, after = asyncio.run(scenario())
    assert [f.opcode for f in server_frames(transport.written)] == [PING]
    assert due and not after


def test_fast_and_full_parsers_hand_over_at_frame_boundaries() -> None:
    """Whole small frames skip websockets' parser; a frame split across reads, a 16-bit
    length, a control frame and a fragmented message in between all still arrive whole
    and in order."""
    big = b"y" * 300  # 16-bit length
    stream = client_bytes(
        Frame(TEXT, b"1"),
        Frame(TEXT, big),
        Frame(PING, b"p"),
        Frame(TEXT, b"2"),
        Frame(TEXT, b"fr", fin=False),
        Frame(CONT, b"ag"),
        Frame(BINARY, b"3"),
        Frame(TEXT, b"z" * 66_000),  # 64-bit length: the full parser's
    )

    async def scenario(chunk: int) -> tuple[Transport, Owner]:
        session, transport, owner = make(max_size=1 << 20)
        for i in range(0, len(stream), chunk):
            session.data_received(stream[i : i + chunk])
        await asyncio.sleep(0)
        return transport, owner

    for chunk in (len(stream), 7, 1, 64):
        transport, owner = asyncio.run(scenario(chunk))
        assert owner.handled == [b"1", big, b"2", b"frag", b"3", b"z" * 66_000], chunk
        frames = server_frames(transport.written)
        assert [f.data for f in frames if f.opcode is PONG] == [b"p"], chunk
        acks = [f.data for f in frames if f.opcode is TEXT]
        assert acks == [b"ack " + m for m in owner.handled], chunk


def test_a_client_that_stops_reading_is_closed_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Owner, "slow_client_s", 0.05)  # the owner says how long (--slow-client)
    monkeypatch.setattr(client_module, "CLOSE_TIMEOUT_S", 0.05)

    async def scenario() -> tuple[Transport, Owner, Transport, Owner]:
        slow, slow_transport, slow_owner = make()
        slow.pause_writing()  # the transport's buffer went over the high-water mark
        brief, brief_transport, brief_owner = make()
        brief.pause_writing()
        await asyncio.sleep(0.01)
        brief.resume_writing()  # caught up within the grace: left alone
        await asyncio.sleep(0.2)
        return slow_transport, slow_owner, brief_transport, brief_owner

    slow_transport, slow_owner, brief_transport, brief_owner = asyncio.run(scenario())
    assert slow_owner.too_slow == 1
    close = server_frames(slow_transport.written)[-1]
    assert close.opcode is CLOSE and Close.parse(close.data).code == 1008
    assert slow_transport.aborted  # it did not answer the close either
    assert brief_owner.too_slow == 0 and brief_transport.written == b""
    assert slow_transport.high == client_module.WRITE_HIGH


def test_a_client_past_the_write_cap_is_closed_before_its_grace_ends() -> None:
    """The grace bounds how long a client may not read, the cap how much: an audit's ping
    flood that read nothing grew a sidecar by 150 MB within the 10 s grace."""

    async def scenario() -> tuple[Transport, Owner, Transport, Owner]:
        flood, flood_transport, flood_owner = make()  # the default grace: 10 s
        flood.pause_writing()
        flood_transport.buffered = client_module.WRITE_CAP + 1
        slow, slow_transport, slow_owner = make()
        slow.pause_writing()
        slow_transport.buffered = client_module.WRITE_CAP  # at the cap: the grace decides
        await asyncio.sleep(3 * client_module.CAP_CHECK_S)
        return flood_transport, flood_owner, slow_transport, slow_owner

    flood_transport, flood_owner, slow_transport, slow_owner = asyncio.run(scenario())
    assert flood_owner.too_slow == 1
    close = server_frames(flood_transport.written)[-1]
    assert close.opcode is CLOSE and Close.parse(close.data).code == 1008
    assert slow_owner.too_slow == 0 and slow_transport.written == b""


def test_the_session_does_not_keep_the_handshakes_connection_alive() -> None:
    """websockets binds `select_subprotocol` to the protocol as a closure over its asyncio
    connection (as `serve(select_subprotocol=…)` does); a session that kept it would keep
    every idle client's whole connection object alive (issue 17: idle memory 3 → 6.5 KB)."""
    import gc
    import weakref

    class Connection:  # stands for websockets' asyncio ServerConnection
        pass

    connection = Connection()
    gone = weakref.ref(connection)
    protocol = ServerProtocol(
        state=State.OPEN,
        select_subprotocol=lambda _p, offered, c=connection: c and None,  # type: ignore[misc]
    )
    del connection
    assert gone() is not None  # the protocol's callback holds it
    session = ClientSession(protocol, Identity("t", 1), 1, Owner())
    gc.disable()  # freed by reference counting, not left to the cycle collector
    try:
        assert gone() is None
    finally:
        gc.enable()
    assert session.protocol is protocol
