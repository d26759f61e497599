"""Client frames built bit by bit, and a lenient reader of the frames a server sends back.

websockets' own `Frame.serialize` refuses to build most of what a conformance probe or a
fuzzer needs (reserved bits, reserved opcodes, unmasked client frames, control frames
over 125 bytes, a 64-bit length with its top bit set, a wider length field than
needed), so `client_frame` writes the header itself. `ServerFrames` parses the other
direction without judging it: a probe wants to *see* what the server sent (a masked
server frame is itself a finding), not to have a client library fail on it.

No I/O here: tests feed these bytes to raw sockets (`wsop.fuzz.raw`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

try:  # websockets' C helper (always built for CPython wheels); the pure one otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

CONT: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

NO_STATUS: Final = 1005
"""What a close frame without a code means (RFC 6455 §7.1.5); never sent on the wire."""


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte `key` (RFC 6455 §5.3; the same both ways)."""
    return apply_mask(payload, key) if payload else b""


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    key: bytes | None = None,
    width: int = 0,
    length: int | None = None,
) -> bytes:
    """One frame as a client would send it, or deliberately not.

    `rsv`: the three reserved bits as an int 0–7 (RSV1 = 4). `width`: 7, 16 or 64 bits of
    length field (0: the smallest that fits, as §5.2 requires). `length`: the value
    written in the length field when it must lie (default: the payload's length).
    """
    n = len(payload) if length is None else length
    if not width:
        width = 7 if n < 126 else 16 if n < 1 << 16 else 64
    head = bytearray([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
    bit = 0x80 if mask else 0
    if width == 7:
        head.append(bit | n)
    elif width == 16:
        head.append(bit | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(bit | 127)
        head += n.to_bytes(8, "big")
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4) if key is None else key
    return bytes(head) + key + mask_bytes(payload, key)


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    """A close frame's payload: 2-byte code then the (UTF-8, or deliberately not) reason."""
    return b"" if code is None else code.to_bytes(2, "big") + reason


@dataclass(frozen=True, slots=True)
class ServerFrame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes

    @property
    def close_code(self) -> int:
        """The code of a close frame (1005 when it carries none)."""
        if len(self.payload) < 2:
            return NO_STATUS
        return int.from_bytes(self.payload[:2], "big")


class ServerFrames:
    """Incremental, non-validating parser of a server's frames: `feed` bytes, get the
    frames completed so far. Masked frames are unmasked (and flagged `masked`)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[ServerFrame]:
        buf = self._buf
        buf += data
        out: list[ServerFrame] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if end - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            masked = bool(b1 & 0x80)
            key_at = pos + head
            if masked:
                head += 4
            if end - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            if masked:
                payload = mask_bytes(payload, bytes(buf[key_at : key_at + 4]))
            out.append(ServerFrame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, masked, payload))
            pos += head + n
        del buf[:pos]
        return out
