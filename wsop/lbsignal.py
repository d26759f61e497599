"""What the LB tells a sidecar about a client, signed so that no client can say it.

Two facts ride on the LB's handshake with a sidecar: that an LB holds this client (only
then may the sidecar send it move frames, which name sidecar URLs, and count it as
movable), and, on a move, which sidecar the client comes from (the new owner then takes
over delivery from the old holder in one step, and the old one's copy is silenced). A
client that could set either would silence its own other tab, receive internal frames
or skew a drain's counts. So both travel in one header, `X-Wsop-Lb`, MACed with the
stack's admin token (HMAC-SHA256) over the client's identity and a timestamp:

    X-Wsop-Lb: v1 <unix seconds> <moved_from or -> <hex mac>

A sidecar trusts it only when the MAC verifies for the identity the handshake
authenticated and the timestamp is within `MAX_AGE_S`; anything else is ignored, as if
the client had connected directly. Pure: no I/O, the clock is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

HEADER: Final = "X-Wsop-Lb"
VERSION: Final = "v1"
MAX_AGE_S: Final = 60
"""A signed header is a handshake's, seconds old; an older one is a replay."""
_NONE: Final = "-"


@dataclass(frozen=True, slots=True)
class LbSignal:
    """What a verified header says: the client is the LB's; it moves from `moved_from`."""

    moved_from: str | None = None


def _mac(token: str, ts: int, tenant: str, user: str, moved_from: str) -> str:
    message = f"{VERSION}|{ts}|{tenant}|{user}|{moved_from}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def sign(token: str, tenant: str, user: object, moved_from: str | None, now: float) -> str:
    """The header value the LB sends with a client's handshake to a sidecar."""
    ts = int(now)
    moved = moved_from or _NONE
    return f"{VERSION} {ts} {moved} {_mac(token, ts, tenant, str(user), moved)}"


def verify(
    token: str | None, value: str | None, tenant: str, user: object, now: float
) -> LbSignal | None:
    """The signal in `value` if it is the LB's for this identity, else None."""
    if not token or not value:
        return None
    parts = value.split(" ")
    if len(parts) != 4 or parts[0] != VERSION or not parts[1].isdigit():
        return None
    _, ts_text, moved, mac = parts
    ts = int(ts_text)
    if abs(now - ts) > MAX_AGE_S:
        return None
    if not hmac.compare_digest(mac, _mac(token, ts, tenant, str(user), moved)):
        return None
    return LbSignal(None if moved == _NONE else moved)
