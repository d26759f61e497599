"""`ClientSession`'s frame path against any TCP chunking: the fast path and websockets'
parser must never split a frame between them, wherever a read happens to end.

Streams are built here, with explicit mask keys (zero-ish ones included) and explicit
length fields, and fed whole, cut at every offset, and in hypothesis-drawn chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import CLOSE, PONG, Close, Frame
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from tests.fakes import FakeTransport as Transport
from tests.sidecar.test_client_session import server_frames
from wsop.auth import Identity
from wsop.sidecar.client import SLOW_CLIENT_S, ClientSession
from wsop.sidecar.outbox import Outbox

CONT, TEXT, BINARY, PING, PONG_OP = 0x0, 0x1, 0x2, 0x9, 0xA
MAX_SIZE = 1 << 17


def frame(opcode: int, payload: bytes, key: bytes, fin: bool = True, width: int = 0) -> bytes:
    """A masked client frame with mask key `key` and a length field of `width` bits (7, 16
    or 64; 0: the smallest that fits). websockets' parser takes a wider field than needed,
    so the session must too."""
    n = len(payload)
    width = width or (7 if n < 126 else 16 if n < 65536 else 64)
    head = bytes([(0x80 if fin else 0) | opcode])
    if width == 7:
        head += bytes([0x80 | n])
    elif width == 16:
        head += b"\xfe" + n.to_bytes(2, "big")
    else:
        head += b"\xff" + n.to_bytes(8, "big")
    return head + key + apply_mask(payload, key)


class Recorder:
    """An owner that records every message, as bytes, and answers nothing."""

    def __init__(self) -> None:
        self.outbox = Outbox()
        self.messages: list[bytes] = []
        self.kinds: list[type] = []
        self.gone = 0

    def client_frame(self, session: ClientSession, data: Any) -> Coroutine[Any, Any, None] | None:
        self.kinds.append(type(data))
        self.messages.append(data.encode() if isinstance(data, str) else bytes(data))
        return None

    slow_client_s = SLOW_CLIENT_S

    def client_gone(self, session: ClientSession) -> None:
        self.gone += 1

    def client_too_slow(self, session: ClientSession) -> None:  # pragma: no cover
        pass


def make(max_size: int = MAX_SIZE) -> tuple[ClientSession, Transport, Recorder]:
    owner = Recorder()
    protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
    session = ClientSession(protocol, Identity("t", 1), 1, owner)
    transport = Transport()
    session.connection_made(transport)  # type: ignore[arg-type]
    return session, transport, owner


async def feed(stream: bytes, cuts: list[int]) -> tuple[list[bytes], list[Frame], ClientSession]:
    """Feed `stream` in the chunks `cuts` makes; what the owner got and the session wrote."""
    session, transport, owner = make()
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        session.data_received(stream[start:end])
    await asyncio.sleep(0)  # the outbox flushes at the end of the pass
    return owner.messages, server_frames(transport.written), session


KEYS = st.one_of(
    st.binary(min_size=4, max_size=4),
    st.sampled_from([bytes(4), b"\x00\x00\x00\x01", b"\x01\x00\x00\x00", b"\x81\x80\x00\x00"]),
)


@st.composite
def client_streams(draw: st.DrawFn, big: bool) -> tuple[bytes, list[bytes], int, list[int]]:
    """(a valid client stream, the messages it carries in order, the pings in it, where
    its frames start)."""
    out: list[bytes] = []
    messages: list[bytes] = []
    pings = 0

    def add(opcode: int, payload: bytes, fin: bool = True) -> None:
        widths = [0, 64] + ([16] if len(payload) < 65536 else [])
        out.append(frame(opcode, payload, draw(KEYS), fin, draw(st.sampled_from(widths))))

    def control() -> None:
        nonlocal pings
        opcode = draw(st.sampled_from([PING, PONG_OP]))
        pings += opcode == PING
        add(opcode, draw(st.binary(max_size=125)))

    def payload(text: bool) -> bytes:
        if big and draw(st.integers(0, 9)) == 0:  # a 64-bit length, now and then
            n = draw(st.integers(65536, 65600))
            return ("é" * (n // 2)).encode() if text else bytes([draw(st.integers(0, 255))]) * n
        sizes = st.one_of(st.integers(0, 30), st.integers(126, 200))  # 7 and 16-bit lengths
        if text:
            return draw(st.text(min_size=draw(sizes) // 2, max_size=200)).encode()
        return draw(st.binary(min_size=draw(sizes), max_size=200))

    for _ in range(draw(st.integers(1, 6 if big else 4))):
        unit = draw(st.sampled_from(["text", "binary", "fragmented", "control"]))
        if unit == "control":
            control()
            continue
        text = unit == "text" or (unit == "fragmented" and draw(st.booleans()))
        data = payload(text)
        messages.append(data)
        if unit != "fragmented":
            add(TEXT if text else BINARY, data)
            continue
        # fragments may split a UTF-8 character: only the whole message must be valid
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), min_size=1, max_size=3)))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        for i, part in enumerate(parts):
            if i and draw(st.booleans()):
                control()  # control frames may sit between fragments
            add(CONT if i else TEXT if text else BINARY, part, fin=i == len(parts) - 1)
    starts = [sum(map(len, out[:i])) for i in range(len(out))]
    return b"".join(out), messages, pings, starts


def check(got: tuple[list[bytes], list[Frame], ClientSession], messages: list[bytes], pings: int):
    received, written, session = got
    assert received == messages
    assert [f.opcode for f in written] == [PONG] * pings  # no error frame, no close
    assert session.protocol.state is State.OPEN


@given(client_streams(big=False))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_stream_cut_at_every_offset_carries_the_same_messages(
    stream: tuple[bytes, list[bytes], int, list[int]],
) -> None:
    data, messages, pings, _ = stream

    async def scenario() -> None:
        check(await feed(data, []), messages, pings)
        for cut in range(1, len(data)):
            check(await feed(data, [cut]), messages, pings)

    asyncio.run(scenario())


@given(client_streams(big=True), st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_stream_in_any_chunking_carries_the_same_messages(
    stream: tuple[bytes, list[bytes], int, list[int]], data: st.DataObject
) -> None:
    raw, messages, pings, starts = stream
    # anywhere, and often where a header part ends: after 2, 4 or 10 bytes, or the mask key
    near_headers = st.sampled_from([s + k for s in starts for k in (1, 2, 4, 6, 8, 10, 14)])
    anywhere = st.integers(1, len(raw) - 1)
    cuts = sorted(set(data.draw(st.lists(st.one_of(anywhere, near_headers), max_size=40))))
    asyncio.run(_check_feed(raw, cuts, messages, pings))


async def _check_feed(raw: bytes, cuts: list[int], messages: list[bytes], pings: int) -> None:
    check(await feed(raw, [c for c in cuts if 0 < c < len(raw)]), messages, pings)


@given(client_streams(big=False), KEYS, st.data())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_close_frame_at_the_end_of_any_chunking_is_answered_once(
    stream: tuple[bytes, list[bytes], int, list[int]], key: bytes, data: st.DataObject
) -> None:
    """The client's close frame switches the stream over to websockets' parser, wherever
    it lands in a read: every message before it is handled, and it gets one answer."""
    raw, messages, pings, _ = stream
    raw += frame(0x8, Close(1000, "bye").serialize(), key) + b"ignored after the close"
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=8))))

    async def scenario() -> None:
        received, written, session = await feed(raw, cuts)
        assert received == messages
        assert [f.opcode for f in written] == [PONG] * pings + [CLOSE]
        assert Close.parse(written[-1].data).code == 1000
        assert session.protocol.state is State.CLOSING
        session.eof_received()  # the client closes its half in turn
        assert session.protocol.state is State.CLOSED

    asyncio.run(scenario())


def test_closing_while_a_frame_is_half_read_still_reads_it_whole() -> None:
    """We send a close (SIGTERM's 1012) while a frame is half-read: the frame, then the
    client's close reply, are read whole by websockets' parser."""
    key = b"\x01\x02\x03\x04"
    message = frame(TEXT, b"in flight", key)
    reply = frame(0x8, Close(1012, "").serialize(), key)

    async def scenario() -> tuple[list[bytes], list[Frame], ClientSession, Transport]:
        session, transport, owner = make()
        session.data_received(message[:4])
        session.close(1012, "service restart")
        session.data_received(message[4:] + reply[:3])
        session.data_received(reply[3:])
        await asyncio.sleep(0)
        return owner.messages, server_frames(transport.written), session, transport

    received, written, session, transport = asyncio.run(scenario())
    assert received == [b"in flight"]
    assert [(f.opcode, Close.parse(f.data).code) for f in written] == [(CLOSE, 1012)]
    assert transport.eof_written and session.protocol.state is State.CLOSING


def test_reads_ending_right_after_a_header_or_its_mask_key() -> None:
    """The two splits seen in the field: the next read starts with the mask key, or with
    the masked payload, and those bytes happen to look like a small masked text frame."""
    payload = b'{"type":"direct","to":2,"data":"hi"}'
    mask_like_a_header = b"\x81\x85\x00\x00"  # FIN text, masked, length 5
    payload_like_a_header = bytes([payload[0] ^ 0x81, payload[1] ^ 0x85, 0x00, 0x00])
    for key, cut in ((mask_like_a_header, 2), (payload_like_a_header, 6)):
        stream = frame(TEXT, payload, key) + frame(TEXT, b"next", key)
        assert stream[cut] == 0x81 and stream[cut + 1] == 0x85  # what the split exposes
        for cuts in ([cut], [cut, len(stream) - 3], list(range(1, len(stream)))):
            check(asyncio.run(feed(stream, cuts)), [payload, b"next"], 0)


def test_a_big_frame_in_small_reads_is_buffered_once() -> None:
    """A 100 KB frame in 1 KB reads: handled whole, and only once it is complete."""
    body = b"z" * 100_000
    stream = frame(BINARY, body, b"\x01\x02\x03\x04") + frame(TEXT, b"after", bytes(4))

    async def scenario() -> tuple[list[bytes], list[int]]:
        session, _, owner = make()
        seen = []
        for i in range(0, len(stream), 1024):
            session.data_received(stream[i : i + 1024])
            seen.append(len(owner.messages))
        return owner.messages, seen

    messages, seen = asyncio.run(scenario())
    assert messages == [body, b"after"]
    assert seen[-2] == 0 and seen[-1] == 2  # nothing was handed over early


def test_a_header_that_declares_an_oversize_frame_fails_at_once() -> None:
    """No need to buffer a frame that will be refused: its header alone earns the 1009."""

    async def scenario() -> tuple[list[Frame], Transport]:
        session, transport, _ = make(max_size=1000)
        session.data_received(b"\x82\xff" + (10**6).to_bytes(8, "big") + bytes(4) + b"x" * 50)
        session.data_received(b"x" * 5000)  # the rest is read and dropped
        await asyncio.sleep(0)
        return server_frames(transport.written), transport

    written, transport = asyncio.run(scenario())
    assert [f.opcode for f in written] == [CLOSE]
    assert Close.parse(written[0].data).code == 1009
    assert transport.eof_written and not transport.aborted


# --- invalid UTF-8 (RFC 6455 §8.1) ----------------------------------------------------


def run_frames(*frames: bytes) -> tuple[list[bytes], list[type], list[Frame], Transport]:
    async def scenario() -> tuple[list[bytes], list[type], list[Frame], Transport]:
        session, transport, owner = make()
        session.data_received(b"".join(frames))
        await asyncio.sleep(0)
        return owner.messages, owner.kinds, server_frames(transport.written), transport

    return asyncio.run(scenario())


def test_text_arrives_as_str_and_binary_as_bytes() -> None:
    key = b"\x11\x22\x33\x44"
    messages, kinds, written, _ = run_frames(
        frame(TEXT, "héllo".encode(), key),
        frame(BINARY, b"\xff\xfe", key),
        frame(TEXT, "h\u00e9".encode()[:2], key, fin=False),  # splits the é
        frame(CONT, "h\u00e9".encode()[2:], key),
    )
    assert messages == ["héllo".encode(), b"\xff\xfe", "hé".encode()]
    assert kinds == [str, bytes, str] and written == []


def test_invalid_utf8_in_a_text_frame_fails_the_connection_with_1007() -> None:
    key = b"\x11\x22\x33\x44"
    bad = b'{"type":"direct","data":"\xff"}'
    cases = [
        [frame(TEXT, bad, key), frame(TEXT, b"never handled", key)],
        [frame(TEXT, bad[:5], key, fin=False), frame(CONT, bad[5:], key)],
        [frame(TEXT, b"caf\xc3", key)],  # a truncated character at the end of the message
    ]
    for frames in cases:
        messages, _, written, transport = run_frames(*frames)
        assert messages == []
        assert [f.opcode for f in written] == [CLOSE]
        assert Close.parse(written[0].data).code == 1007
        assert transport.eof_written


def test_only_a_whole_nul_led_text_frame_over_an_lb_leg_is_an_lb_control_frame() -> None:
    """The LB strips unfragmented NUL-led text frames from what clients send and sends
    its own control frames in that shape; a client's NUL-led message in another shape
    (fragmented, binary) reached the sidecar's control handler (an audit closed its own
    connection with a forged `moved`): it must come out as an ordinary message."""
    from wsop.sidecar.client import LbControl

    key = b"\x01\x02\x03\x04"
    moved = b"\x00wsop:moved"
    stream = (
        frame(TEXT, moved, key)  # the LB's shape
        + frame(TEXT, moved[:6], key, fin=False)  # a client's, fragmented
        + frame(CONT, moved[6:], key)
        + frame(BINARY, moved, key)  # a client's, binary
    )

    def kinds(via_lb: bool) -> list[tuple[type, bytes]]:
        session, _transport, owner = make()
        session.via_lb = via_lb
        got: list[tuple[type, bytes]] = []
        owner.client_frame = lambda _s, data: got.append((type(data), data))  # type: ignore[method-assign]
        session.data_received(stream)
        return [(kind, data.encode() if isinstance(data, str) else data) for kind, data in got]

    assert kinds(via_lb=True) == [(LbControl, moved), (str, moved), (bytes, moved)]
    assert kinds(via_lb=False) == [(str, moved), (str, moved), (bytes, moved)]


def test_a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() -> None:
    """RFC 6455 §5.2: the most significant bit of a 64-bit length MUST be 0 — a broken
    client, not a big message: 1002, not 1009."""

    async def scenario() -> tuple[list[Frame], Transport, list[bytes]]:
        session, transport, owner = make()
        session.data_received(b"\x82\xff" + (1 << 63 | 5).to_bytes(8, "big") + bytes(4))
        session.data_received(frame(TEXT, b"after", b"\x01\x02\x03\x04"))  # discarded
        await asyncio.sleep(0)
        return server_frames(transport.written), transport, owner.messages

    written, transport, messages = asyncio.run(scenario())
    assert [f.opcode for f in written] == [CLOSE]
    assert Close.parse(written[0].data).code == 1002
    assert messages == [] and transport.eof_written
