"""Client-side WebSocket framing (RFC 6455 §5.2) for the load generator. Pure: bytes in,
messages out; payloads in, masked frames out.

websocket-client reads each frame with several small `recv` calls (header, length,
payload), and under gevent every call is a trip through the hub: at thousands of
deliveries a second per process that, not JSON, was the load generator's main cost.
So the generator keeps websocket-client for the handshake only, reads each socket in
bulk (one `recv` for however many frames arrived, parsed by `FrameReader`) and builds
its frames here (`Masker`): websocket-client masks byte by byte in Python.

Masking: RFC 6455 §5.3 wants every client frame masked with a fresh key from a strong
source of entropy (a predictable key lets a hostile page poison proxies' caches). The
keys come from `os.urandom`, 4 KiB at a time (one syscall per 1,024 frames), and the
XOR is websockets' C `apply_mask` (websockets is a dependency; without its C speedups,
an XOR on whole integers, `int.from_bytes`): ~0.1 µs for a 100-byte chat frame.
"""

from __future__ import annotations

import os

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


KEY_BATCH = 4096  # bytes of mask keys drawn per os.urandom call: 1,024 frames


class FrameError(Exception):
    """The byte stream is not a valid sequence of server frames."""


class Masker:
    """Builds masked client frames, each with its own random key (see the module doc)."""

    def __init__(self) -> None:
        self._keys = b""
        self._at = KEY_BATCH

    def _key(self) -> bytes:
        at = self._at
        if at >= KEY_BATCH:
            self._keys, at = os.urandom(KEY_BATCH), 0
        self._at = at + 4
        return self._keys[at : at + 4]

    def frame(self, payload: bytes, opcode: int = 1) -> bytes:
        """One final, masked frame (text by default) carrying `payload`."""
        n = len(payload)
        at = self._at
        if at >= KEY_BATCH:
            self._keys, at = os.urandom(KEY_BATCH), 0
        self._at = at + 4
        key = self._keys[at : at + 4]
        if n < 126:
            if opcode == OP_TEXT:
                return TEXT_HEADS[n] + key + apply_mask(payload, key)
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
        return head + key + apply_mask(payload, key)


def _apply_mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte `key` repeated, on whole integers (no C speedups at hand)."""
    n = len(payload)
    if not n:
        return b""
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


try:  # websockets' C helper (a dependency): ~10x cheaper than the integer XOR
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a platform without its wheel
    apply_mask = _apply_mask

TEXT_HEADS = [bytes((0x80 | OP_TEXT, 0x80 | n)) for n in range(126)]


class FrameReader:
    """Feed raw bytes; get back complete messages as (opcode, payload) pairs.

    Fragmented data messages are reassembled (their first frame's opcode is kept);
    control frames (close, ping, pong) come back as soon as they are complete, even in
    the middle of a fragmented message, as the RFC allows.
    """

    def __init__(self, max_message: int = 16 << 20) -> None:
        self._rest: list[bytes] = []  # the start of a frame that has not fully arrived
        self._have = self._need = 0  # its bytes so far, and how many it needs
        self._frag_op: int | None = None
        self._frag: list[bytes] = []
        self.max_message = max_message
        self.idle = True  # no frame or message half-read: the next bytes start a new frame

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The messages completed by `data`. Works on the bytes as received (one copy per
        payload, none for the buffer); a final, unfragmented text frame of under 126
        bytes — most of a chat load — takes the shortest path."""
        if self._rest:  # a big frame in many reads is joined once, not once per read
            self._rest.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._rest)
            self._rest, self._have, self._need = [], 0, 0
        out: list[tuple[int, bytes]] = []
        pos, end, need = 0, len(data), 0
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            if b0 == 0x81 and b1 < 126 and self._frag_op is None:  # final text, unmasked
                if end - pos < 2 + b1:
                    need = 2 + b1
                    break
                out.append((OP_TEXT, data[pos + 2 : pos + 2 + b1]))
                pos += 2 + b1
                continue
            if b0 & 0x70:
                raise FrameError("reserved bits set (no extension was negotiated)")
            opcode, n, head = b0 & 0x0F, b1 & 0x7F, 2
            if n == 126:
                if end - pos < 4:
                    break
                n, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            if n > self.max_message:
                raise FrameError(f"frame of {n} bytes exceeds {self.max_message}")
            key = b""
            if b1 & 0x80:
                if end - pos < head + 4:
                    break
                key, head = data[pos + head : pos + head + 4], head + 4
            if end - pos < head + n:
                need = head + n
                break
            payload = data[pos + head : pos + head + n]
            pos += head + n
            if key:
                payload = apply_mask(payload, key)
            self._frame(b0 & 0x80, opcode, payload, out)
        if pos < end:
            self._rest, self._have, self._need = [data[pos:]], end - pos, need
        self.idle = not self._rest and self._frag_op is None
        return out

    def _frame(self, fin: int, opcode: int, payload: bytes, out: list) -> None:
        if opcode >= OP_CLOSE:
            if not fin or len(payload) > 125:
                raise FrameError("control frames must be final and ≤ 125 bytes")
            out.append((opcode, payload))
        elif opcode == OP_CONTINUATION:
            if self._frag_op is None:
                raise FrameError("continuation frame without a message to continue")
            self._frag.append(payload)
            if fin:
                out.append((self._frag_op, b"".join(self._frag)))
                self._frag_op, self._frag = None, []
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._frag_op is not None:
                raise FrameError("new data frame inside a fragmented message")
            if fin:
                out.append((opcode, payload))
            else:
                self._frag_op, self._frag = opcode, [payload]
        else:
            raise FrameError(f"unknown opcode {opcode}")
