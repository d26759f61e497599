"""Wire messages of the WebSocket stack: parse, validate and encode, with no I/O.

The servers (`wsop lb`, `wsop sidecar`) are thin asyncio layers around this module, the
way the `websockets` library wraps its Sans-I/O `protocol.py`: every edge case of the
wire format is a plain unit test here, never a socket test.

Client → stack (JSON text frames; see docs/protocol.md)::

    {"type":"direct","to":U,"data":ANY,"id":"c1"}
    {"type":"team","teams":["a","b"],"data":ANY,"id":"c2"}

Stack → client (compact JSON, ASCII-only so a lone surrogate in user data can never
make the frame unencodable)::

    {"type":"message","from":U,"data":ANY,"id":"c1","ts":UNIX_MS[,"teams":[...]][,"offset":"E:N"]}
    {"type":"ack","id":"c2","delivered":N}
    {"type":"error","id":"c2","code":"bad_request","message":"..."}
    {"type":"recovered","ok":true,"count":N}   (after a reconnect with ?since=OFFSET)

`id` is always present in server frames (`null` when the client sent none), so clients
can read it without a key check. Unknown extra keys in client frames are ignored, which
lets clients grow new fields without breaking old stacks.

Peer links between sidecars use their own batch format: `wsop.sidecar.peer_codec`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from wsop.errors import WsopError
from wsop.names import MAX_STRING_ID_CHARS, TEAM_RE, TENANT_RE, IdMode, canonical_user_id

# The recovery part of the wire (offsets, `?since=`, `recovered`) is `wsop.recovery_wire`;
# its names stay reachable here, where every other part of the wire format is.
from wsop.recovery_wire import (  # noqa: F401  (re-exported)
    HISTORY_DISABLED,
    HISTORY_UNAVAILABLE,
    MALFORMED_OFFSET,
    OFFSET_MAX_CHARS,
    PRESENCE_LOST,
    RECOVERY_REASONS,
    UNKNOWN_OFFSET,
    WINDOW_EXCEEDED,
    encode_recovered,
    format_offset,
    offset_within,
    parse_offset,
    with_offset,
)

# Error codes of `{"type":"error"}` frames (a contract: clients switch on them).
BAD_REQUEST: Final = "bad_request"
FORBIDDEN: Final = "forbidden"
TOO_LARGE: Final = "too_large"
NOT_FOUND: Final = "not_found"
UNAVAILABLE: Final = "unavailable"
INTERNAL: Final = "internal"
RATE_LIMITED: Final = "rate_limited"
TOO_MANY_RECIPIENTS: Final = "too_many_recipients"
UNAUTHORIZED: Final = "unauthorized"
"""HTTP APIs only (`POST /publish`, `GET /presence`): no or a bad credential (401)."""
ERROR_CODES: Final = frozenset(
    {
        BAD_REQUEST,
        FORBIDDEN,
        TOO_LARGE,
        NOT_FOUND,
        UNAVAILABLE,
        INTERNAL,
        RATE_LIMITED,
        TOO_MANY_RECIPIENTS,
        UNAUTHORIZED,
    }
)

# Sidecar → LB control frame on a client's upstream: "\x00wsop:move NAME URL" asks the LB
# to move that client to sidecar NAME. A JSON frame never starts with NUL, so the LB
# tells them apart with one character check, and never forwards them to the client.
MOVE_PREFIX: Final = "\x00wsop:move "


# The subprotocol a client may offer (`new WebSocket(url, ["wsop.v1"])`): selected when
# offered, so browsers that must name one can; a client that offers none gets none.
SUBPROTOCOL: Final = "wsop.v1"

# LB → sidecar, on the upstream a client just moved away from: "\x00wsop:moved". The old
# sidecar finishes what it owes that connection (acks of messages it is still routing,
# deliveries already on their way) and then closes it; until then the LB keeps relaying
# its frames to the client between messages.
MOVED_FRAME: Final = "\x00wsop:moved"


def move_frame(target: str, url: str) -> str:
    """The control frame asking the LB to move a client to sidecar `target` at `url`."""
    return f"{MOVE_PREFIX}{target} {url}"


# Limits. Frame size is the server's choice (passed to `parse_client_frame`).
DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024
MAX_ID_CHARS: Final = 128
MAX_USER_ID_CHARS: Final = MAX_STRING_ID_CHARS
MAX_TEAMS: Final = 64
MAX_DEPTH: Final = 100
"""Arrays/objects nested in a client frame, the frame itself included: far more than any
message needs, far below the ~1000 at which Python's JSON codec raises RecursionError."""


UserId = int | str


class ProtocolError(WsopError):
    """A client frame we refuse; becomes one error frame, never a closed connection.

    `id` is the client's correlation id when it could be read, so the error frame
    answers the right request.
    """

    exit_code = 2

    def __init__(self, code: str, message: str, id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id

    def to_frame(self) -> str:
        return encode_error(self.id, self.code, self.message)


@dataclass(slots=True)
class DirectMessage:
    """`{"type":"direct"}`: deliver `data` to one user of the sender's tenant."""

    to: UserId
    data: Any
    id: str | None = None


@dataclass(slots=True)
class TeamMessage:
    """`{"type":"team"}`: deliver `data` to every online reader of any named team."""

    teams: tuple[str, ...]
    data: Any
    id: str | None = None


ClientMessage = DirectMessage | TeamMessage


def is_valid_tenant(name: object) -> bool:
    return isinstance(name, str) and TENANT_RE.fullmatch(name) is not None


def is_valid_team(name: object) -> bool:
    return isinstance(name, str) and TEAM_RE.fullmatch(name) is not None


def normalize_user_id(value: object, mode: IdMode | None = None) -> UserId | None:
    """The canonical id `value` names in a tenant of id `mode`, or None if it names none.

    The rule lives in `wsop.names` (docs/protocol.md, "Identifiers"): a user *is* its
    text, so `"007"` and `"7"` are two users; int tenants take only canonical integers
    (`7` or `"7"`), string tenants any printable string (an int n is `"n"`). Without a
    mode (the LB, a token: the tenant is not known yet) the value comes back as given,
    if some mode could accept it; the sidecar, which knows the mode, decides.
    """
    return canonical_user_id(value, mode)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float, unless it overflows: `1e999` would parse as `inf`,
    which the encoder (allow_nan=False) then refuses when the message is delivered."""
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(BAD_REQUEST, f"number out of range: {text[:20]}")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests containers more than `limit` levels deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if kind is dict else item))
    return False


# Prebuilt codecs: json.dumps/loads with keyword arguments builds a new coder per call.
_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_MISSING: Final = object()
_string = json.encoder.encode_basestring_ascii  # (C) what `_encode` does to a str


def _scalar(value: Any) -> str:
    """`_encode(value)`, without the encoder's set-up for the common scalars."""
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _encode(value)


def parse_client_frame(
    raw: str | bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES, ids: IdMode | None = None
) -> ClientMessage:
    """Parse one client frame (text, or binary holding UTF-8 JSON).

    `ids`: the sender's tenant id mode; a direct message's `to` comes back canonical for
    it (`normalize_user_id`), so `"007"` never reaches user 7. Without it, `to` comes
    back as given (when some mode could accept it).

    Raises ProtocolError(`too_large` | `bad_request`, message, id): one json decode and
    a handful of type checks, because this runs once per message at 30K msg/s a core.
    """
    return message_from_object(decode_object(raw, max_bytes), ids)


def decode_object(
    raw: str | bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES, what: str = "frame"
) -> dict[str, Any]:
    """The JSON object a frame (or a `POST /publish` body: `what`, in the errors) holds:
    size, UTF-8, JSON, an object, nesting checked; ProtocolError(`too_large` |
    `bad_request`) otherwise."""
    if isinstance(raw, bytes | bytearray | memoryview):
        if len(raw) > max_bytes:
            raise ProtocolError(TOO_LARGE, f"{what} exceeds {max_bytes} bytes")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(BAD_REQUEST, f"{what} is not UTF-8 text") from None
    elif len(raw) > max_bytes or (
        len(raw) * 4 > max_bytes
        and not raw.isascii()
        and len(raw.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise ProtocolError(TOO_LARGE, f"{what} exceeds {max_bytes} bytes")
    try:
        obj = _decode(raw)
    except (ValueError, RecursionError):
        raise ProtocolError(BAD_REQUEST, f"{what} is not valid JSON") from None
    if type(obj) is not dict:
        raise ProtocolError(BAD_REQUEST, f"{what} must be a JSON object")
    # Nesting the decoder took may still be too deep to encode again (one level more,
    # deeper in the stack): only a frame with that many brackets can be.
    if (
        len(raw) > MAX_DEPTH
        and raw.count("[") + raw.count("{") > MAX_DEPTH
        and _deeper_than(obj, MAX_DEPTH)
    ):
        raise ProtocolError(BAD_REQUEST, f"{what} nests deeper than {MAX_DEPTH} levels")
    return obj


def message_from_object(obj: dict[str, Any], ids: IdMode | None = None) -> ClientMessage:
    """The message a decoded frame object holds (see `parse_client_frame`)."""
    id = obj.get("id")
    if id is not None and (type(id) is not str or len(id) > MAX_ID_CHARS):
        raise ProtocolError(BAD_REQUEST, f"id must be a string of at most {MAX_ID_CHARS} chars")
    data = obj.get("data", _MISSING)
    kind = obj.get("type")

    if kind == "direct":
        to = canonical_user_id(obj.get("to"), ids)
        if to is None:
            rule = ids.rule if ids else "a non-negative integer or a user id string"
            raise ProtocolError(BAD_REQUEST, f"direct: 'to' must be {rule}", id)
        if data is _MISSING:
            raise ProtocolError(BAD_REQUEST, "direct: missing 'data'", id)
        return DirectMessage(to, data, id)

    if kind == "team":
        teams = obj.get("teams")
        if type(teams) is not list or not 0 < len(teams) <= MAX_TEAMS:
            raise ProtocolError(
                BAD_REQUEST, f"team: 'teams' must be a list of 1 to {MAX_TEAMS} team names", id
            )
        for team in teams:
            if type(team) is not str or TEAM_RE.fullmatch(team) is None:
                raise ProtocolError(
                    BAD_REQUEST, "team: team names match [A-Za-z0-9_.:-]{1,128}", id
                )
        if len(set(teams)) != len(teams):
            raise ProtocolError(BAD_REQUEST, "team: duplicate team name", id)
        if data is _MISSING:
            raise ProtocolError(BAD_REQUEST, "team: missing 'data'", id)
        return TeamMessage(tuple(teams), data, id)

    if kind is None:
        raise ProtocolError(BAD_REQUEST, "missing 'type'", id)
    raise ProtocolError(BAD_REQUEST, "unknown 'type' (expected 'direct' or 'team')", id)


def encode_direct(to: UserId, data: Any, id: str | None = None) -> str:
    """A client's direct message (what clients, the load generator and tests send)."""
    frame: dict[str, Any] = {"type": "direct", "to": to, "data": data}
    if id is not None:
        frame["id"] = id
    return _encode(frame)


def encode_team(teams: Sequence[str], data: Any, id: str | None = None) -> str:
    """A client's team message."""
    frame: dict[str, Any] = {"type": "team", "teams": list(teams), "data": data}
    if id is not None:
        frame["id"] = id
    return _encode(frame)


def encode_message(
    from_user: UserId,
    data: Any,
    id: str | None,
    ts_ms: int,
    teams: Sequence[str] | None = None,
) -> str:
    """The frame every recipient gets; encode once per message, send to all. Spliced
    from its parts (what `_encode` of the dict gives, property-tested): only `data` can
    need the general encoder."""
    tail = "}" if teams is None else f',"teams":{_encode(list(teams))}}}'
    return (
        f'{{"type":"message","from":{_scalar(from_user)},"data":{_scalar(data)},'
        f'"id":{_scalar(id)},"ts":{_scalar(ts_ms)}{tail}'
    )


def encode_ack(id: str | None, delivered: int, undelivered: int = 0) -> str:
    """Tell the sender how many recipient users the message reached, and how many it
    could not reach (the key is present only when some were not)."""
    head = f'{{"type":"ack","id":{_scalar(id)},"delivered":{_scalar(delivered)}'
    if undelivered:
        return f'{head},"undelivered":{_scalar(undelivered)}}}'
    return head + "}"


def encode_error(id: str | None, code: str, message: str) -> str:
    """An error frame; the connection stays open."""
    return _encode({"type": "error", "id": id, "code": code, "message": message})


class CloseCode(IntEnum):
    """The close codes wsop's servers send (RFC 6455 §7.4.1, IANA registry), by name:
    this module writes the wire format, the servers only pick one."""

    NORMAL = 1000
    """Done: the client left, or its old connection after a move ("moved")."""
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    """A text frame that is not UTF-8 (§8.1)."""
    POLICY_VIOLATION = 1008
    """A client that stopped reading its messages."""
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    """Its presence could not be recorded (Redis down at connect)."""
    SERVICE_RESTART = 1012
    """A server shutting down, or a sidecar that vanished: reconnect."""
    TRY_AGAIN_LATER = 1013


UNSENDABLE_CLOSE_CODES: Final = frozenset({1004, 1005, 1006, 1015})
"""Codes that describe a close but may never be sent in a close frame (§7.4.1)."""

MAX_CLOSE_REASON_BYTES: Final = 123  # RFC 6455 §5.5: 125-byte control payload, 2 for the code


def close_reason(text: str) -> str:
    """Trim `text` to what a close frame can carry, never mid-character."""
    return text.encode("utf-8")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")
