"""What wsop relies on inside websockets, beyond its documented API — held here so an
upgrade that changes it fails this test, not a stack in production.

The LB and the sidecar let websockets' asyncio server and client do the handshakes, then
take the socket over (`wsop.detach.Detachable`): they override the connection's
`data_received` (an asyncio.Protocol method of websockets' Connection), read its
`transport`, `request` and `protocol.state`, cancel its `keepalive_task`, and hand
sessions websockets' sans-I/O `ServerProtocol` to keep (reader, `max_message_size`,
`send_*`/`data_to_send`). pyproject.toml pins websockets to the major versions this
passes on."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State
from websockets.server import ServerProtocol

from wsop.detach import Detachable


def test_the_pinned_major_version() -> None:
    major = int(websockets.__version__.split(".")[0])
    assert 15 <= major < 18, websockets.__version__


def test_connections_are_asyncio_protocols_we_can_override() -> None:
    for cls in (ServerConnection, ClientConnection):
        assert issubclass(cls, asyncio.Protocol)
        for name in ("data_received", "eof_received", "connection_lost", "connection_made"):
            assert callable(getattr(cls, name)), (cls, name)
    assert "max_size" in inspect.signature(ServerProtocol).parameters
    protocol = ServerProtocol(max_size=10)
    assert protocol.max_message_size == 10  # sessions lower it per client after the handshake
    for name in ("receive_data", "receive_eof", "events_received", "data_to_send", "send_text"):
        assert callable(getattr(protocol, name)), name


@pytest.mark.asyncio
async def test_a_detached_connection_hands_over_its_socket_and_stashed_bytes() -> None:
    """The whole mechanism on a real server: bytes sent right after the handshake are
    stashed, never parsed by websockets, and the new protocol gets them, in order."""
    received = bytearray()
    attached = asyncio.Event()

    transports: list[asyncio.BaseTransport] = []

    class Raw(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)
            attached.set()

        def data_received(self, data: bytes) -> None:
            received.extend(data)

    class Taken(Detachable, ServerConnection):
        def _relayable(self) -> bool:
            return self.request is not None

    async def handler(conn: ServerConnection) -> None:
        assert isinstance(conn, Taken) and conn.protocol.state is State.OPEN
        assert getattr(conn, "keepalive_task", None) is not None  # we cancel it
        await asyncio.sleep(0.1)  # the client's first frames arrive meanwhile: stashed
        conn.detach(Raw())

    async with serve(handler, "127.0.0.1", 0, create_connection=Taken, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            await ws.send("first")
            await ws.send("second")
            await asyncio.wait_for(attached.wait(), 2)
            for _ in range(50):
                if len(received) >= 2 * (6 + 5):
                    break
                await asyncio.sleep(0.02)
            for transport in transports:  # ours now: websockets will not close it
                transport.abort()
    frames = bytes(received)
    assert frames[0] == 0x81 and frames[1] & 0x80  # raw masked client frames, untouched
    assert len(frames) >= 2 * 6 + len("first") + len("second")
