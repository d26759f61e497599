"""Recovery on the wire (docs/protocol.md, "Recovery"): offsets, `?since=`, `recovered`.

An offset is "EPOCH:SEQ": SEQ counts one user's messages in the log that EPOCH names
(a log is one user's; its epoch is new whenever the history it indexed is lost). It is
opaque to clients: they keep the last one they saw and hand it back as `?since=`.
Pure, like `wsop.protocol` (which re-exports these names): the histories
(`wsop.sidecar.history`, `history_redis`) issue and check offsets, the sidecar splices
them into frames and ends every replay with `encode_recovered`.
"""

from __future__ import annotations

import json
import re
from typing import Final

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode  # as wsop.protocol's
OFFSET_MAX_CHARS: Final = 40
_OFFSET_RE: Final = re.compile(r"([0-9a-z]{1,22}):([1-9][0-9]{0,15})")

# Why a recovery failed (`{"type":"recovered","ok":false,"reason":…}`), a contract too.
MALFORMED_OFFSET: Final = "malformed_offset"
UNKNOWN_OFFSET: Final = "unknown_offset"
WINDOW_EXCEEDED: Final = "window_exceeded"
PRESENCE_LOST: Final = "presence_lost"
HISTORY_UNAVAILABLE: Final = "unavailable"
HISTORY_DISABLED: Final = "disabled"
RECOVERY_REASONS: Final = frozenset(
    {
        MALFORMED_OFFSET,
        UNKNOWN_OFFSET,
        WINDOW_EXCEEDED,
        PRESENCE_LOST,
        HISTORY_UNAVAILABLE,
        HISTORY_DISABLED,
    }
)


def format_offset(epoch: str, seq: int) -> str:
    return f"{epoch}:{seq}"


def parse_offset(text: object) -> tuple[str, int] | None:
    """(epoch, seq) of an offset we could have issued, else None (never raises)."""
    if type(text) is not str or len(text) > OFFSET_MAX_CHARS:
        return None
    match = _OFFSET_RE.fullmatch(text)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def offset_within(offset: str, epoch: str, upto: int) -> bool:
    """Whether `offset` is at or before `upto` of the log `epoch`: a frame a replay that
    ended there already carried (so sending it live again would be a duplicate)."""
    parsed = parse_offset(offset)
    return parsed is not None and parsed[0] == epoch and parsed[1] <= upto


def with_offset(frame: str, offset: str) -> str:
    """A message frame (`encode_message`: a compact JSON object) with its recipient's
    offset as its last key. One concatenation per recipient: the frame itself is encoded
    once for all of them, and an offset never needs escaping (`_OFFSET_RE`)."""
    return f'{frame[:-1]},"offset":"{offset}"}}'


def encode_recovered(ok: bool, count: int = 0, reason: str | None = None) -> str:
    """The end of a replay: `count` missed messages were sent before it (ok), or the
    history cannot prove it has every one of them (`reason`, one of RECOVERY_REASONS)."""
    if ok:
        return _encode({"type": "recovered", "ok": True, "count": count})
    return _encode({"type": "recovered", "ok": False, "reason": reason})
