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

History (`wsop.sidecar.history`): an owner forwarding to holders names each user's
offset (a seventh element; the sixth, pieces, is then present even when 1); a log handed
to a user's new owner travels as its entries, then its end; a sidecar that is not a
reconnecting user's owner asks the owner for the replay::

    ["d","acme",[17,42],7,"h",1,["3fa0c1d2:8","9b1e0f3a:2"]]
    {"type":"message",...}
    ["l","acme",42,"9b1e0f3a",2,1530,1]     an entry of acme/42's log: seq 2, 1530 ms
    {"type":"message",...}                 old, in 1 piece
    ["L","acme",42,"9b1e0f3a",3,1,2400]    its end: next seq 3, newest evicted seq 1
    (empty line)                           (2400 ms old)
    ["r",5,"acme",42,"9b1e0f3a:1"]         replay request 5 for acme/42 since that
    (empty line)
    ["R",5,1,null,"9b1e0f3a",2,1]          its answer: ok (1) or the reason, epoch, upto,
    [["9b1e0f3a:2","{\"type\":…}"]]        pieces; payload: [offset, frame] pairs
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
    offsets: list[str] | None = None
    """Each user's offset, set by its owner ("" where the history could not record)."""


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


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of a log handed to the user's new owner (ages, not clock readings)."""

    tenant: str
    user: UserId
    epoch: str
    seq: int
    age_ms: int
    frame: str


@dataclass(frozen=True, slots=True)
class LogEnd:
    """The end of a handed log: its next seq and its newest evicted entry."""

    tenant: str
    user: UserId
    epoch: str
    next_seq: int
    gone_seq: int
    gone_age_ms: int


@dataclass(frozen=True, slots=True)
class ReplayAsk:
    request: int
    tenant: str
    user: UserId
    since: str


@dataclass(frozen=True, slots=True)
class ReplayAnswer:
    request: int
    reason: str | None
    """None: ok."""
    epoch: str | None
    upto: int
    entries: list[tuple[str, str]]


PeerItem = Deliver | Ack | Holding | LogEntry | LogEnd | ReplayAsk | ReplayAnswer


def _head_and_payload(item: PeerItem) -> tuple[list[object], str | None]:
    """An item's header (without a piece count) and its payload (None: an empty line)."""
    if isinstance(item, Deliver):
        return ["d", item.tenant, item.users, item.ack, item.mode], item.frame
    if isinstance(item, Ack):
        return ["a", item.ack, item.delivered, item.unreachable], None
    if isinstance(item, Holding):
        head: list[object] = ["h", item.tenant, item.user, 1 if item.holding else 0]
        if item.replaces:
            head.append(item.replaces)
        return head, None
    if isinstance(item, LogEntry):
        return ["l", item.tenant, item.user, item.epoch, item.seq, item.age_ms], item.frame
    if isinstance(item, LogEnd):
        return [
            "L", item.tenant, item.user, item.epoch, item.next_seq, item.gone_seq,
            item.gone_age_ms,
        ], None  # fmt: skip
    if isinstance(item, ReplayAsk):
        return ["r", item.request, item.tenant, item.user, item.since], None
    return ["R", item.request, item.reason, item.epoch, item.upto], _encode(item.entries)


def _with_pieces(item: PeerItem, head: list[object], pieces: int) -> list[object]:
    """The header with its piece count, where its kind keeps it (a plain `Deliver`
    omits a count of 1; one with offsets carries them after the count)."""
    if isinstance(item, Deliver):
        if item.offsets is not None:
            return [*head, pieces, item.offsets]
        return [*head, pieces] if pieces > 1 else head
    if isinstance(item, (LogEntry, ReplayAnswer)):
        return [*head, pieces]
    return head


def encode_item(item: PeerItem) -> str:
    """Two lines for one item (joined into batches by `encode_batch`)."""
    head, payload = _parts(item)
    return _whole(item, head, payload)


def encode_pieces(item: PeerItem, max_bytes: int) -> list[str]:
    """`item` as one or more encoded items, none with a payload above `max_bytes` (only
    a frame can be that long: it is split into pieces, see the module docstring)."""
    head, payload = _parts(item)
    if payload is None or len(payload) <= max_bytes:
        return [_whole(item, head, payload)]
    pieces = [payload[i : i + max_bytes] for i in range(0, len(payload), max_bytes)]
    first = _encode(_with_pieces(item, head, len(pieces))) + "\n" + pieces[0]
    return [first, *(_CONTINUATION + piece for piece in pieces[1:])]


_CONTINUATION: Final = '["+"]\n'


def _parts(item: PeerItem) -> tuple[list, str | None]:
    head, payload = _head_and_payload(item)
    if payload is not None and "\n" in payload:
        raise PeerFormatError("a forwarded frame must not contain a newline")
    return head, payload


def _whole(item: PeerItem, head: list, payload: str | None) -> str:
    """The item in one piece: its head line, then its payload line."""
    return _encode(_with_pieces(item, head, 1)) + "\n" + (payload or "")


def encode_batch(encoded_items: Sequence[str]) -> str:
    return "\n".join(encoded_items)


def _deliver(head: list, payload: str) -> Deliver:
    _, tenant, users, ack, mode, *rest = head
    if not isinstance(users, list) or mode not in (TO_OWNER, TO_HOLDER, TO_OWNER_FINAL):
        raise ValueError
    offsets = rest[1] if len(rest) > 1 else None
    if offsets is not None and (
        type(offsets) is not list
        or len(offsets) != len(users)
        or not all(type(o) is str for o in offsets)
    ):
        raise ValueError
    return Deliver(str(tenant), users, int(ack), mode, payload, offsets)


def _entry(head: list, payload: str) -> LogEntry:
    _, tenant, user, epoch, seq, age, _pieces = head
    return LogEntry(str(tenant), user, str(epoch), int(seq), int(age), payload)


def _answer(head: list, payload: str) -> ReplayAnswer:
    _, request, reason, epoch, upto, _pieces = head
    pairs = _decode(payload)
    if type(pairs) is not list or not all(
        type(p) is list and len(p) == 2 and all(type(x) is str for x in p) for p in pairs
    ):
        raise ValueError
    return ReplayAnswer(
        int(request), None if reason is None else str(reason),
        None if epoch is None else str(epoch), int(upto), [(o, f) for o, f in pairs],
    )  # fmt: skip


_BUILDERS = {"d": (_deliver, 5), "l": (_entry, 6), "R": (_answer, 5)}
"""Kinds with a payload: their builder and where their header keeps the piece count."""


def _plain(head: list) -> PeerItem:
    """An item without a payload."""
    kind = head[0]
    if kind == "a":
        return Ack(int(head[1]), int(head[2]), int(head[3]))
    if kind == "h":
        replaces = str(head[4]) if len(head) > 4 else None
        return Holding(str(head[1]), head[2], bool(head[3]), replaces)
    if kind == "L":
        _, tenant, user, epoch, next_seq, gone_seq, gone_age = head
        return LogEnd(str(tenant), user, str(epoch), int(next_seq), int(gone_seq), int(gone_age))
    if kind == "r":
        _, request, tenant, user, since = head
        return ReplayAsk(int(request), str(tenant), user, str(since))
    raise ValueError


class PeerDecoder:
    """Decodes the batches of one link, in order, reassembling frames sent in pieces."""

    def __init__(self) -> None:
        self._head: list | None = None
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
                if kind == "+":
                    item = self._piece(lines[i + 1])
                elif kind in _BUILDERS:
                    item = self._framed(head, lines[i + 1])
                else:
                    item = _plain(head)
                if item is not None:
                    items.append(item)
            except (ValueError, TypeError, IndexError, KeyError):
                raise PeerFormatError(f"malformed peer header at item {i // 2}") from None
        return items

    @property
    def partial(self) -> bool:
        """A frame is half-received (its remaining pieces are due in the next batches)."""
        return self._left > 0

    def _framed(self, head: list, payload: str) -> PeerItem | None:
        build, at = _BUILDERS[head[0]]
        pieces = head[at] if len(head) > at else 1
        plain_deliver = head[0] == "d" and len(head) == at + 1
        if type(pieces) is not int or pieces < (2 if plain_deliver else 1):
            raise ValueError  # (a count of 1 is written only before a Deliver's offsets)
        if pieces == 1:
            return build(head, payload)
        self._head = head
        self._pieces, self._left, self._size = [payload], pieces - 1, len(payload)
        return None

    def _piece(self, payload: str) -> PeerItem | None:
        if not self._left or self._head is None:
            raise PeerFormatError("a frame piece without its header")
        self._size += len(payload)
        if self._size > MAX_ITEM_BYTES:
            raise PeerFormatError(f"a frame in pieces exceeds {MAX_ITEM_BYTES} bytes")
        self._pieces.append(payload)
        self._left -= 1
        if self._left:
            return None
        head, frame = self._head, "".join(self._pieces)
        self._pieces, self._head = [], None
        return _BUILDERS[head[0]][0](head, frame)


def decode_batch(raw: str | bytes) -> list[PeerItem]:
    """One self-contained batch (no frame left in pieces at its end)."""
    decoder = PeerDecoder()
    items = decoder.feed(raw)
    if decoder.partial:
        raise PeerFormatError("the batch ends inside a frame sent in pieces")
    return items
