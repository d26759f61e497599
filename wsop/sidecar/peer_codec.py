"""The sidecar ↔ sidecar link format: batches of small JSON headers and opaque frames.

A batch is newline-separated text, two lines per item: a JSON header, then a payload
line (the client frame for deliveries, empty otherwise)::

    ["d","acme",[17,42],7,"o"]       deliver to these users; ack id 7 (0: no ack);
    {"type":"message",...}           "o" = you are the owner, "h" = you only hold them,
                                     "f" = owner, redirected once: do not forward again
    ["a",7,2,0]                      ack 7: 2 users reached, 0 unreachable
    (empty line)
    ["h","acme",42,1]                I hold a connection of acme/42 (1) / no longer (0)
    (empty line)
    ["h","acme",42,1,"s3"]           I hold it now, *instead of* s3 (a move: the owner
    (empty line)                     swaps holders atomically, so no message is missed)

Frames are encoded once by the sender and forwarded verbatim: the receiver parses only
the headers. Our encoders emit compact ASCII JSON, which never contains a newline.

A frame too big for one link frame is sent in pieces, never refused: its header says how
many (a sixth element), the first piece rides on its payload line and the others follow
at once as continuation items, possibly in later batches (one link is one ordered
stream, so a `PeerDecoder` per link reassembles them)::

    ["d","acme",[17],7,"o",3]
    {"type":"message","from":1,"data":"aaaa…          piece 1 of 3
    ["+"]
    …aaaa…                                           piece 2
    ["+"]
    …aaaa"}                                          piece 3
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from wsop.errors import WsopError

UserId = int | str
TO_OWNER: Final = "o"
TO_HOLDER: Final = "h"
TO_OWNER_FINAL: Final = "f"  # redirected once already: deliver or report, never forward
MAX_ITEM_BYTES: Final = 64 * 1024 * 1024
"""A reassembled frame larger than this is a broken peer, not a message (the client frame
limit times JSON escaping is far below it)."""

_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode


class PeerFormatError(WsopError):
    """A peer sent something that is not a batch; the link is dropped and re-dialled."""


@dataclass(frozen=True, slots=True)
class Deliver:
    tenant: str
    users: list[UserId]
    ack: int
    mode: str
    frame: str


@dataclass(frozen=True, slots=True)
class Ack:
    ack: int
    delivered: int
    unreachable: int


@dataclass(frozen=True, slots=True)
class Holding:
    tenant: str
    user: UserId
    holding: bool
    replaces: str | None = None


PeerItem = Deliver | Ack | Holding


def encode_item(item: PeerItem) -> str:
    """Two lines for one item (joined into batches by `encode_batch`)."""
    if isinstance(item, Deliver):
        if "\n" in item.frame:
            raise PeerFormatError("a forwarded frame must not contain a newline")
        return _encode(["d", item.tenant, item.users, item.ack, item.mode]) + "\n" + item.frame
    if isinstance(item, Ack):
        return _encode(["a", item.ack, item.delivered, item.unreachable]) + "\n"
    head: list[object] = ["h", item.tenant, item.user, 1 if item.holding else 0]
    if item.replaces:
        head.append(item.replaces)
    return _encode(head) + "\n"


def encode_pieces(item: PeerItem, max_bytes: int) -> list[str]:
    """`item` as one or more encoded items, none with a payload above `max_bytes` (only a
    `Deliver` frame can be that long: it is split into pieces, see the module docstring)."""
    if not isinstance(item, Deliver) or len(item.frame) <= max_bytes:
        return [encode_item(item)]
    if "\n" in item.frame:
        raise PeerFormatError("a forwarded frame must not contain a newline")
    frame = item.frame
    pieces = [frame[i : i + max_bytes] for i in range(0, len(frame), max_bytes)]
    head = _encode(["d", item.tenant, item.users, item.ack, item.mode, len(pieces)])
    return [head + "\n" + pieces[0], *(_CONTINUATION + piece for piece in pieces[1:])]


_CONTINUATION: Final = '["+"]\n'


def encode_batch(encoded_items: Sequence[str]) -> str:
    return "\n".join(encoded_items)


class PeerDecoder:
    """Decodes the batches of one link, in order, reassembling frames sent in pieces."""

    def __init__(self) -> None:
        self._head: tuple[str, list[UserId], int, str] | None = None
        self._pieces: list[str] = []
        self._left = 0
        self._size = 0

    def feed(self, raw: str | bytes) -> list[PeerItem]:
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PeerFormatError("peer batch is not UTF-8") from None
        lines = raw.split("\n")
        if len(lines) % 2:
            raise PeerFormatError(f"peer batch has an odd number of lines ({len(lines)})")
        items: list[PeerItem] = []
        for i in range(0, len(lines), 2):
            try:
                head = _decode(lines[i])
                kind = head[0]
                if self._left and kind != "+":
                    raise PeerFormatError(f"item {i // 2}: a frame's pieces were interrupted")
                if kind == "d":
                    item = self._deliver(head, lines[i + 1])
                    if item is not None:
                        items.append(item)
                elif kind == "+":
                    item = self._piece(lines[i + 1])
                    if item is not None:
                        items.append(item)
                elif kind == "a":
                    items.append(Ack(int(head[1]), int(head[2]), int(head[3])))
                elif kind == "h":
                    replaces = str(head[4]) if len(head) > 4 else None
                    items.append(Holding(str(head[1]), head[2], bool(head[3]), replaces))
                else:
                    raise ValueError
            except (ValueError, TypeError, IndexError, KeyError):
                raise PeerFormatError(f"malformed peer header at item {i // 2}") from None
        return items

    @property
    def partial(self) -> bool:
        """A frame is half-received (its remaining pieces are due in the next batches)."""
        return self._left > 0

    def _deliver(self, head: list, payload: str) -> Deliver | None:
        _, tenant, users, ack, mode, *rest = head
        if not isinstance(users, list) or mode not in (TO_OWNER, TO_HOLDER, TO_OWNER_FINAL):
            raise ValueError
        if not rest:
            return Deliver(str(tenant), users, int(ack), mode, payload)
        (pieces,) = rest
        if type(pieces) is not int or pieces < 2:
            raise ValueError
        self._head = (str(tenant), users, int(ack), mode)
        self._pieces, self._left, self._size = [payload], pieces - 1, len(payload)
        return None

    def _piece(self, payload: str) -> Deliver | None:
        if not self._left or self._head is None:
            raise PeerFormatError("a frame piece without its header")
        self._size += len(payload)
        if self._size > MAX_ITEM_BYTES:
            raise PeerFormatError(f"a frame in pieces exceeds {MAX_ITEM_BYTES} bytes")
        self._pieces.append(payload)
        self._left -= 1
        if self._left:
            return None
        tenant, users, ack, mode = self._head
        frame, self._pieces, self._head = "".join(self._pieces), [], None
        return Deliver(tenant, users, ack, mode, frame)


def decode_batch(raw: str | bytes) -> list[PeerItem]:
    """One self-contained batch (no frame left in pieces at its end)."""
    decoder = PeerDecoder()
    items = decoder.feed(raw)
    if decoder.partial:
        raise PeerFormatError("the batch ends inside a frame sent in pieces")
    return items
