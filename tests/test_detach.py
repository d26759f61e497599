"""`Detachable`: a socket whose peer vanished while the server was still deciding (the
sidecar's presence write, the LB's dial) is handed over cleanly: the new protocol gets
the stashed bytes and `connection_lost`, and nothing raises.

Found by the fuzzer (tests/fuzz/test_fuzz.py): a client that reset its socket right after its
upgrade made `ClientSession.connection_made` call `set_write_buffer_limits` on uvloop's
closed transport, which raises; the session was never told the connection was lost, so
its user stayed online (and counted as a connection) until the sidecar restarted.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import pytest

from wsop.detach import Detachable

LOOPS: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
    ("asyncio", asyncio.new_event_loop)
]
try:
    import uvloop

    LOOPS.append(("uvloop", uvloop.new_event_loop))
except ImportError:  # pragma: no cover
    pass


class Base(asyncio.Protocol):
    """What websockets' connection does, reduced to what `Detachable` calls."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class Conn(Detachable, Base):
    def _relayable(self) -> bool:
        return True


class Session(asyncio.Protocol):
    """Like `ClientSession`/the LB's sides: sets up the transport in `connection_made`."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_write_buffer_limits(high=1024 * 1024)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


@pytest.mark.parametrize("make_loop", [m for _, m in LOOPS], ids=[n for n, _ in LOOPS])
def test_a_peer_that_reset_before_attach_is_handed_over_as_lost(
    make_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario() -> Session:
        conns: list[Conn] = []

        def accept() -> Conn:
            conns.append(Conn())
            return conns[-1]

        server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1")
        port = server.sockets[0].getsockname()[1]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /ws HTTP/1.1\r\n\r\nframes")
        while not conns or conns[0]._stash != b"frames":
            await asyncio.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # an RST while the server is still deciding what to do
        while not conns[0].lost:
            await asyncio.sleep(0.01)
        session = Session()
        conns[0].attach(session)
        conns[0].replay()
        server.close()
        return session

    loop = make_loop()
    try:
        session = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert session.data == b"frames" and session.lost
