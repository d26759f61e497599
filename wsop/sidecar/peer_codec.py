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


def encode_batch(encoded_items: Sequence[str]) -> str:
    return "\n".join(encoded_items)


def decode_batch(raw: str | bytes) -> list[PeerItem]:
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
            if kind == "d":
                _, tenant, users, ack, mode = head
                if not isinstance(users, list) or mode not in (TO_OWNER, TO_HOLDER, TO_OWNER_FINAL):
                    raise ValueError
                items.append(Deliver(str(tenant), users, int(ack), mode, lines[i + 1]))
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
