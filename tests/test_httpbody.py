"""`BodyReading`: a GET reaches websockets byte for byte; any other method's head reaches
it without its body headers, and the body is read beside it, bounded. The servers'
side of it (real websockets, real sockets) is tests/sidecar/test_publish_e2e.py."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes import FakeTransport
from wsop.httpbody import MAX_HEAD_BYTES, PREFETCH_BYTES, BodyError, BodyReading, strip_body_headers


class Base(asyncio.Protocol):
    """What websockets' connection receives, recorded."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class Conn(BodyReading, Base):
    def __init__(self) -> None:
        super().__init__()
        self.transport = FakeTransport()


def feed(conn: Conn, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        conn.data_received(data[i : i + step])


POST = (
    b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 11\r\nAuthorization: Bearer t\r\n\r\n"
)


@given(step=st.integers(1, 40))
def test_a_get_passes_through_byte_for_byte(step: int) -> None:
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n\x81\x85abcdhello"
    conn = Conn()
    feed(conn, request, step)
    assert bytes(conn.got) == request


@given(step=st.integers(1, 60))
def test_a_post_head_loses_its_body_headers_and_the_body_is_read(step: int) -> None:
    async def run() -> None:
        conn = Conn()
        feed(conn, POST + b'{"a":"xyz"}', step)
        assert bytes(conn.got) == (
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer t\r\n\r\n"
        )
        assert conn.body_length == 11
        assert await conn.read_body(100) == b'{"a":"xyz"}'

    asyncio.run(run())


def test_the_body_may_arrive_after_it_is_asked_for() -> None:
    async def run() -> None:
        conn = Conn()
        conn.data_received(POST + b'{"a"')
        reading = asyncio.ensure_future(conn.read_body(100))
        await asyncio.sleep(0)
        assert not reading.done()
        conn.data_received(b':"xyz"}EXTRA')  # bytes past Content-Length are dropped
        assert await reading == b'{"a":"xyz"}'
        assert b"EXTRA" not in conn.got

    asyncio.run(run())


def test_a_body_over_the_limit_is_refused_unread() -> None:
    async def run() -> None:
        conn = Conn()
        conn.data_received(POST.replace(b"11", b"5000000"))
        with pytest.raises(BodyError) as info:
            await conn.read_body(65536)
        assert info.value.status == 413
        conn.data_received(b"x" * 100_000)  # drained, not kept
        assert conn._body is None

    asyncio.run(run())


@pytest.mark.parametrize(
    ("header", "status", "needle"),
    [
        (b"Transfer-Encoding: chunked\r\n", 411, "chunked"),
        (b"Content-Length: 12\r\n", 400, "Content-Length"),  # a second, different one
        (b"Content-Length: -1\r\n", 400, "Content-Length"),
    ],
)
def test_bodies_that_cannot_be_read_are_refused(header: bytes, status: int, needle: str) -> None:
    async def run() -> None:
        conn = Conn()
        head = POST if b"-1" not in header else POST.replace(b"Content-Length: 11\r\n", b"")
        conn.data_received(head.replace(b"\r\n\r\n", b"\r\n" + header + b"\r\n", 1))
        with pytest.raises(BodyError) as info:
            await conn.read_body(100)
        assert info.value.status == status and needle in info.value.message
        assert b"Transfer-Encoding" not in conn.got and b"Content-Length" not in conn.got

    asyncio.run(run())


def test_a_body_cut_short_is_an_error_not_a_hang() -> None:
    async def run() -> None:
        conn = Conn()
        conn.data_received(POST + b'{"a"')
        reading = asyncio.ensure_future(conn.read_body(100))
        await asyncio.sleep(0)
        assert conn.eof_received() is True  # the transport stays open for the answer
        with pytest.raises(BodyError) as info:
            await reading
        assert info.value.status == 400 and "4 of 11" in info.value.message
        assert not conn.eof  # websockets would close the transport before the 400

    asyncio.run(run())


def test_over_tls_websockets_hears_of_the_eof_as_before() -> None:
    """(asyncio's TLS transport closes on EOF whatever the protocol returns)"""
    conn = Conn()
    conn.transport.extra["sslcontext"] = object()
    conn.data_received(POST + b'{"a"')
    assert conn.eof_received() is None and conn.eof


def test_a_get_connection_hears_of_eof_as_before() -> None:
    conn = Conn()
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
    assert conn.eof_received() is None and conn.eof


def test_expect_100_continue_is_answered_when_the_body_is_wanted() -> None:
    async def run() -> None:
        conn = Conn()
        conn.data_received(POST.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        reading = asyncio.ensure_future(conn.read_body(100))
        await asyncio.sleep(0)
        assert bytes(conn.transport.written) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.data_received(b'{"a":"xyz"}')
        assert await reading == b'{"a":"xyz"}'

    asyncio.run(run())


def test_reading_pauses_until_the_endpoint_asks_for_the_body() -> None:
    async def run() -> None:
        conn = Conn()
        size = 3 * PREFETCH_BYTES
        conn.data_received(POST.replace(b"11", str(size).encode()))
        conn.data_received(b"x" * PREFETCH_BYTES)
        assert conn.transport.paused
        reading = asyncio.ensure_future(conn.read_body(size))
        await asyncio.sleep(0)
        assert not conn.transport.paused
        conn.data_received(b"x" * (size - PREFETCH_BYTES))
        assert len(await reading) == size

    asyncio.run(run())


def test_an_endless_head_goes_to_websockets_as_it_is() -> None:
    conn = Conn()
    junk = b"POST / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEAD_BYTES // 6 + 1)
    conn.data_received(junk)
    assert bytes(conn.got) == junk  # websockets refuses it with its own 400


def test_strip_body_headers_is_case_insensitive_and_keeps_the_rest() -> None:
    head = b"PUT /x HTTP/1.1\r\ncontent-LENGTH: 3\r\nX-Content-Length: 9\r\n\r\n"
    stripped, length, problem, expect = strip_body_headers(head)
    assert (length, problem, expect) == (3, None, False)
    assert stripped == b"PUT /x HTTP/1.1\r\nX-Content-Length: 9\r\n\r\n"
