"""The LB's frame-header scanner (pure): frames found in any chunking, control frames
intercepted only whole, the close frames the LB writes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode

from tests.lb.helpers import Recorder
from wsop.lb.frames import close_frame, parse_close, text_frame

# --- the raw relay's frame scanner (pure) -----------------------------------------------


LENGTHS = st.one_of(
    st.integers(0, 125),
    st.integers(126, 400),  # 16-bit length
    st.sampled_from([65535, 65536, 65537]),  # the 16/64-bit edge and 64-bit lengths
)


def payload(length: int, first: int = 7) -> bytes:
    return bytes([first]) + bytes(length - 1) if length else b""


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[bool, list[tuple[bytes, str, bytes]], list[int]]:
    """(masked, [(frame bytes, kind, detail)], chunk cut points) for a valid stream."""
    masked = draw(st.booleans())
    frames: list[tuple[bytes, str, bytes]] = []

    def add(op: Opcode, data: bytes, fin: bool, kind: str, detail: bytes = b"") -> None:
        frame = Frame(op, data, fin=fin).serialize(mask=masked, extensions=[])
        frames.append((frame, kind, detail))

    for _ in range(draw(st.integers(0, 6))):
        unit = draw(st.sampled_from(["text", "binary", "fragmented", "ping", "nul", "close"]))
        if unit in ("text", "binary"):
            op = Opcode.TEXT if unit == "text" else Opcode.BINARY
            first = 7 if unit == "text" else draw(st.integers(0, 255))
            add(op, payload(draw(LENGTHS), first), True, "fin")
        elif unit == "fragmented":  # a NUL first byte in a fragment is just data
            add(Opcode.TEXT, payload(draw(LENGTHS), 0), False, "nofin")
            for last in [False] * draw(st.integers(0, 2)) + [True]:
                if draw(st.booleans()):
                    add(Opcode.PING, b"p", True, "ctrl")  # control frames may interleave
                add(Opcode.CONT, payload(draw(LENGTHS)), last, "fin" if last else "nofin")
        elif unit == "ping":
            add(draw(st.sampled_from([Opcode.PING, Opcode.PONG])), b"x" * 5, True, "ctrl")
        elif unit == "nul":
            text = "\x00wsop:move s1 ws://h:1" + "x" * draw(st.integers(0, 300))
            add(Opcode.TEXT, text.encode(), True, "nul", text.encode())
        else:
            body = Close(draw(st.sampled_from([1000, 1012, 4001])), "bye").serialize()
            add(Opcode.CLOSE, body, True, "close", body)
    total = sum(len(f) for f, _, _ in frames)
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=12)))
    return masked, frames, cuts


@given(frame_streams(), st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_scanner_finds_frames_in_any_chunking(
    stream: tuple[bool, list[tuple[bytes, str, bytes]], list[int]], intercept: bool
) -> None:
    masked, frames, cuts = stream
    data = b"".join(f for f, _, _ in frames)
    emitted, boundaries, in_message, messages = bytearray(), {0}, False, 0
    controls, closes = [], []
    for frame, kind, detail in frames:
        if kind == "nul" and intercept:
            controls.append(detail)
            continue
        emitted += frame
        if kind in ("fin", "nul"):
            messages, in_message = messages + 1, False
        elif kind == "nofin":
            in_message = True
        elif kind == "close":
            closes.append(detail)
        if not in_message:
            boundaries.add(len(emitted))
    scanner = Recorder(intercept)
    counted = 0
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        counted += scanner.feed(data[start:end])
        # what went out always stops at a header boundary or inside an emitted payload
        assert scanner.held == b"" or len(scanner.held) < 14 + 65537 + 400
    assert bytes(scanner.out) == bytes(emitted)
    assert scanner.controls == controls and scanner.closes == closes
    assert counted == messages
    assert scanner.boundaries == boundaries
    assert scanner.held == b"" and scanner.skip == 0 and scanner.at_boundary == (not in_message)


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("masked", [False, True])
def test_scanner_header_lengths_byte_by_byte(length: int, masked: bool) -> None:
    frame = Frame(Opcode.BINARY, payload(length), fin=True).serialize(mask=masked, extensions=[])
    head = 2 + (2 if 126 <= length < 65536 else 8 if length >= 65536 else 0) + 4 * masked
    scanner = Recorder(intercept=True)
    counted = 0
    for i in range(head):  # the header, one byte at a time: held back until complete
        counted += scanner.feed(frame[i : i + 1])
        assert len(scanner.out) == (head if i == head - 1 else 0)
    assert counted == 1  # a message counts when its final frame's header is read
    assert scanner.skip == length and scanner.at_boundary == (length == 0)
    assert scanner.feed(frame[head:]) == 0
    assert bytes(scanner.out) == frame and scanner.at_boundary and scanner.skip == 0


def test_scanner_intercepts_only_whole_unfragmented_nul_text() -> None:
    move = text_frame("\x00wsop:move s1 ws://h:1", mask=False)
    normal = text_frame('{"a":1}', mask=False)
    binary_nul = Frame(Opcode.BINARY, b"\x00x").serialize(mask=False, extensions=[])
    stream = normal + move + binary_nul + move + normal
    scanner = Recorder(intercept=True)
    for i in range(len(stream)):  # worst case: one byte per read
        scanner.feed(stream[i : i + 1])
    assert scanner.controls == [b"\x00wsop:move s1 ws://h:1"] * 2
    assert bytes(scanner.out) == normal + binary_nul + normal
    off = Recorder(intercept=False)
    assert off.feed(stream) == 5 and bytes(off.out) == stream and off.controls == []


def test_close_frames_the_lb_writes() -> None:
    unmasked = close_frame(1012, "sidecar went away", mask=False)
    assert unmasked[:2] == b"\x88\x13" and parse_close(unmasked[2:]) == (1012, "sidecar went away")
    scanner = Recorder(intercept=False)
    scanner.feed(close_frame(4001, "bye", mask=True))  # masked: the scanner unmasks it
    assert [parse_close(p) for p in scanner.closes] == [(4001, "bye")]
    assert parse_close(b"") == (None, "")
