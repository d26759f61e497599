"""The read side of a client connection: frame the input, hand websockets whole frames.

The sidecar runs websockets' sans-I/O `ServerProtocol` under its own asyncio protocol
(`wsop.sidecar.client`), and frames the input itself (`FrameReader._frames`): complete,
final, masked text/binary frames within the size limit and outside a fragmented message
— nearly every frame a client sends — are unmasked here with websockets' C `apply_mask`,
skipping its generator-based parser. Every other frame (control frames, fragments,
reserved bits, anything unusual) is handed to the protocol *whole*, so websockets' parser
is always at a frame boundary between our calls and the two never split a frame,
wherever TCP cuts the stream. (Its parser consumes header bytes while it waits for a
payload: an empty parser buffer does not mean "at a boundary", and guessing so lost
messages at unlucky splits.)

A frame that has not fully arrived waits in our own buffer, bounded by the max frame
size and looked at again only once it can be complete (no re-scan per read, no quadratic
copying). A frame whose header alone dooms the connection — over the size limit (1009),
unmasked or a reserved opcode (1002) — goes to websockets at once, which fails it
without buffering the payload. Once the connection is closing, websockets' parser gets
every byte: it reads the client's close frame, or discards.
"""

from __future__ import annotations

import asyncio
from typing import Final

try:  # websockets' C helper (always built for CPython wheels); the pure one otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask
from websockets.frames import BINARY, CONT, TEXT
from websockets.protocol import State
from websockets.server import ServerProtocol

_OPEN: Final = State.OPEN
_RESERVED: Final = tuple(op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15) for op in range(16))
"""Opcodes RFC 6455 reserves: websockets fails a frame with one from its first 2 bytes."""


class FrameReader(asyncio.Protocol):
    """`data_received` for a connection whose `protocol` did the handshake; subclasses
    take the messages (`_message`) and write what the protocol queued (`_protocol_acted`)."""

    __slots__ = (
        "protocol",
        "pong_due",
        "_fragments",
        "_text",
        "_pending",
        "_need",
        "_raw",
        "_failed",
        "_fast_limit",
    )

    def __init__(self, protocol: ServerProtocol) -> None:
        self.protocol = protocol
        self.pong_due = False
        """A keepalive ping went out and nothing came back yet."""
        self._fragments: list[bytes] | None = None
        """The parts of a fragmented message so far (websockets' parser frames them)."""
        self._text = False
        """The fragmented message in `_fragments` is text."""
        self._pending: bytearray | None = None
        """The start of a frame that has not fully arrived yet."""
        self._need = 0
        """How many bytes `_pending` must hold before it is worth looking at again."""
        self._raw = False
        """websockets' parser reads every byte from here on (the connection is closing, or
        it was handed a frame its header already condemned)."""
        self._failed = False
        """We failed the connection: nothing more from the client is handled."""
        limit, fragment = protocol.max_message_size, protocol.max_fragment_size
        if fragment is not None:
            limit = fragment if limit is None else min(limit, fragment)
        self._fast_limit = 1 << 64 if limit is None else limit
        """The largest frame outside a fragmented message that websockets would take."""

    def _message(self, data: bytes, text: bool, one_frame: bool = True) -> None:
        """One whole message, from a text frame (`text`, not decoded yet) or a binary one;
        `one_frame`: it came unfragmented (the only shape of the LB's control frames)."""
        raise NotImplementedError

    def _protocol_acted(self) -> None:
        """The protocol queued writes (pongs, a close frame) or is closing. Only the
        parser and `_fail` make it act: the fast path never checks."""
        raise NotImplementedError

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): a close frame, then nothing more from
        the client is handled (websockets' parser discards the rest)."""
        self._failed = True
        self._fragments = None
        self.protocol.fail(code, reason)
        self._protocol_acted()

    def data_received(self, data: bytes) -> None:
        self.pong_due = False  # any byte from the client proves it is alive
        if self._raw:
            self._to_parser(data)
        else:
            pending = self._pending
            if pending is not None:
                pending += data  # amortized: a big frame in many reads is copied once
                if len(pending) < self._need:
                    return  # still incomplete: nothing to look at yet
                self._pending = None
                data = pending  # type: ignore[assignment]
            taken = self._frames(data)
            if taken < len(data):
                if data is pending:
                    del pending[:taken]
                    self._pending = pending
                else:
                    self._pending = bytearray(memoryview(data)[taken:])

    def _frames(self, data: bytes | bytearray) -> int:
        """Handle the whole frames at the start of `data`; returns how many bytes they
        took (the rest is the start of a frame, and `_need` says how much of it we need).

        Complete, final, masked text/binary frames outside a fragmented message are
        unmasked here; any other whole frame goes to websockets' parser on its own, so the
        parser never holds part of a frame. After a frame whose header condemns the
        connection, or once the connection is closing, the parser gets the rest."""
        protocol = self.protocol
        fast_limit = self._fast_limit
        size = protocol.current_size  # (set while a fragmented message is read)
        pos, end = 0, len(data)
        if protocol.state is not _OPEN:  # closing: websockets' parser reads or discards
            self._raw = True
            self._to_parser(data)
            return end
        while pos < end:
            if end - pos < 2:
                self._need = 2
                return pos
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            head = 6  # 2 + the mask key
            if length >= 126:
                head = 8 if length == 126 else 14
                if end - pos < head:
                    self._need = head
                    return pos
                length = int.from_bytes(data[pos + 2 : pos + head - 4], "big")
                if length >> 63:  # RFC 6455 §5.2: the top bit of a 64-bit length is 0
                    self._fail(1002, "frame length with its most significant bit set")
                    self._raw = True  # the parser, failed, discards whatever follows
                    return end
            stop = pos + head + length
            if (
                (first == 0x81 or first == 0x82)  # FIN, text or binary
                and second & 0x80  # masked
                and size is None  # not inside a fragmented message
                and length <= fast_limit
            ):
                if stop > end:
                    self._need = head + length
                    return pos
                mask = data[pos + head - 4 : pos + head]
                self._message(apply_mask(data[pos + head : stop], mask), first == 0x81)
                pos = stop
                if self._failed:  # (invalid UTF-8) websockets' parser discards the rest
                    break
                continue
            cap = protocol.max_message_size
            if cap is None:
                cap = 1 << 64
            elif size is not None:
                cap -= size
            if protocol.max_fragment_size is not None:
                cap = min(cap, protocol.max_fragment_size)
            if length > cap or second < 0x80 or _RESERVED[first & 0x0F]:
                # Over the limit (1009), unmasked or a reserved opcode (1002): websockets
                # fails it from the header alone; no need to buffer the payload.
                self._raw = True
                self._to_parser(data[pos:])
                return end
            if stop > end:
                self._need = head + length
                return pos
            self._to_parser(data[pos:stop])
            pos = stop
            if protocol.state is not _OPEN:  # a close frame, or a frame websockets refused
                break
            size = protocol.current_size
        else:
            return pos
        self._raw = True
        if pos < end:
            self._to_parser(data[pos:])
        return end

    def _to_parser(self, data: bytes | bytearray) -> None:
        """Feed websockets' parser; handle the messages it completes."""
        protocol = self.protocol
        protocol.receive_data(data)
        for frame in protocol.events_received():
            if self._failed:
                break
            opcode = frame.opcode
            if opcode is TEXT or opcode is BINARY:
                if frame.fin:
                    self._message(frame.data, opcode is TEXT)
                else:
                    self._fragments = [frame.data]
                    self._text = opcode is TEXT
            elif opcode is CONT and self._fragments is not None:
                self._fragments.append(frame.data)
                if frame.fin:
                    whole, self._fragments = b"".join(self._fragments), None
                    self._message(whole, self._text, one_frame=False)
            # (pings are answered by the protocol; any pong already cleared pong_due)
        if protocol.writes or protocol.state is not _OPEN:
            self._protocol_acted()
