"""The trunk record format: length-prefixed binary records on a raw byte stream (pure).

After the `/trunk` upgrade both ends stop speaking WebSocket: the socket carries records,
each a 9-byte header and a payload::

    +------+-----------------+-----------------+------------------+
    | type | channel (u32 BE)| length (u32 BE) | payload (length) |
    +------+-----------------+-----------------+------------------+

    OPEN    ch  peer address (UTF-8, may be empty)  LB → sidecar: a new client stream
    DATA    ch  bytes of the stream (1..MAX_DATA)    both ways
    CLOSE   ch  (none)                               the sender writes no more (a FIN)
    RESET   ch  reason (UTF-8, may be empty)         the stream is aborted (an RST)
    CREDIT  ch  u32 BE > 0                           the sender may send that many more
                                                     DATA bytes on ch (flow control)
    PING    0   8 opaque bytes                       answered by a PONG with the same bytes
    PONG    0   8 bytes
    GOAWAY  0   reason (UTF-8)                       the sender closes the trunk

Channel records name a channel (≠ 0), trunk records channel 0. A channel's DATA is a
byte stream, not messages: a decoder hands a DATA payload on in pieces as it arrives
(`TrunkDecoder`), so it never holds more than a header and a small control payload, and
any split of the stream into reads yields the same records, DATA pieces aside.

Why not WebSocket frames on the trunk: every frame from the LB would have to be masked
(RFC 6455 §5.3) and unmasked, and the payloads are already WebSocket frames of the
clients; a length prefix is all a multiplexer needs (HTTP/2 and yamux frame the same way).
"""

from __future__ import annotations

import struct
from typing import Final

from wsop.errors import WsopError

OPEN: Final = 1
DATA: Final = 2
CLOSE: Final = 3
RESET: Final = 4
CREDIT: Final = 5
PING: Final = 6
PONG: Final = 7
GOAWAY: Final = 8
NAMES: Final = {
    OPEN: "OPEN", DATA: "DATA", CLOSE: "CLOSE", RESET: "RESET", CREDIT: "CREDIT",
    PING: "PING", PONG: "PONG", GOAWAY: "GOAWAY",
}  # fmt: skip

HEADER: Final = struct.Struct("!BII")
HEADER_SIZE: Final = HEADER.size
WINDOW: Final = 256 * 1024
"""Each channel's initial credit, each way: what a sender may have in flight unacknowledged."""
MAX_DATA: Final = WINDOW
"""The largest DATA payload (a sender never has more credit than the window)."""
MAX_CHANNEL: Final = 0xFFFFFFFF
MAX_TEXT: Final = 255
"""The largest OPEN address, RESET or GOAWAY reason."""
PING_SIZE: Final = 8
_CREDIT: Final = struct.Struct("!I")

_CHANNEL_RECORDS: Final = frozenset((OPEN, DATA, CLOSE, RESET, CREDIT))
# the payload length each record type may have: (min, max)
_LENGTHS: Final = {
    OPEN: (0, MAX_TEXT),
    DATA: (1, MAX_DATA),
    CLOSE: (0, 0),
    RESET: (0, MAX_TEXT),
    CREDIT: (4, 4),
    PING: (PING_SIZE, PING_SIZE),
    PONG: (PING_SIZE, PING_SIZE),
    GOAWAY: (0, MAX_TEXT),
}

Record = tuple[int, int, bytes]
"""(type, channel, payload)."""


class TrunkFormatError(WsopError):
    """The peer sent something that is not a trunk record: the trunk is closed."""


def header(kind: int, channel: int, length: int) -> bytes:
    """A record's header (its payload follows: `parts.append(header(...)); parts.append(p)`
    joins into one write without building the record first)."""
    return HEADER.pack(kind, channel, length)


def record(kind: int, channel: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, channel, len(payload)) + payload


def credit(channel: int, amount: int) -> bytes:
    if not 0 < amount <= MAX_CHANNEL:
        raise ValueError(f"credit must be 1..2^32-1, got {amount}")
    return HEADER.pack(CREDIT, channel, 4) + _CREDIT.pack(amount)


def credit_amount(payload: bytes) -> int:
    return int(_CREDIT.unpack(payload)[0])


def text(value: str) -> bytes:
    """An address or reason as a payload: UTF-8, cut to `MAX_TEXT` bytes on a character."""
    raw = value.encode("utf-8")
    if len(raw) <= MAX_TEXT:
        return raw
    return raw[:MAX_TEXT].decode("utf-8", "ignore").encode("utf-8")


class TrunkDecoder:
    """Records from a stream of reads, in order; `feed` raises `TrunkFormatError` on the
    first thing that is not a record (and the stream is unusable from there on)."""

    __slots__ = ("_held", "_data_channel", "_data_left")

    def __init__(self) -> None:
        self._held = b""
        """A record start that has not fully arrived: a header, or a control record."""
        self._data_channel = 0
        self._data_left = 0
        """Bytes of a DATA payload still to come (handed on as they arrive)."""

    @property
    def at_boundary(self) -> bool:
        """Nothing is half-read: the stream so far ends between records."""
        return not self._held and not self._data_left

    def feed(self, data: bytes) -> list[Record]:
        out: list[Record] = []
        n = len(data)
        i = 0
        left = self._data_left
        if left:
            if left >= n:
                self._data_left = left - n
                if n:
                    out.append((DATA, self._data_channel, data))
                return out
            out.append((DATA, self._data_channel, data[:left]))
            self._data_left = 0
            i = left
        elif self._held:
            data = self._held + data
            self._held = b""
            n = len(data)
        unpack = HEADER.unpack_from
        while n - i >= HEADER_SIZE:
            kind, channel, length = unpack(data, i)
            limits = _LENGTHS.get(kind)
            if limits is None:
                raise TrunkFormatError(f"unknown trunk record type {kind}")
            if (channel != 0) is not (kind in _CHANNEL_RECORDS):
                name = NAMES[kind]
                raise TrunkFormatError(f"{name} record on channel {channel}")
            if not limits[0] <= length <= limits[1]:
                name = NAMES[kind]
                raise TrunkFormatError(f"{name} record of {length} bytes")
            start = i + HEADER_SIZE
            end = start + length
            if kind == DATA:
                if end > n:  # hand on what is here; the rest comes in the next reads
                    if start < n:
                        out.append((DATA, channel, data[start:]))
                    self._data_channel, self._data_left = channel, end - n
                    return out
                out.append((DATA, channel, data[start:end]))
            else:
                if end > n:
                    break
                payload = data[start:end]
                if kind == CREDIT and payload == b"\x00\x00\x00\x00":
                    raise TrunkFormatError(f"CREDIT of 0 on channel {channel}")
                out.append((kind, channel, payload))
            i = end
        if i < n:
            self._held = data[i:]
        return out


def describe(rec: Record) -> str:
    """One record for logs and test failures."""
    kind, channel, payload = rec
    return f"{NAMES.get(kind, kind)}({channel}, {len(payload)} bytes)"
