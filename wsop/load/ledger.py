"""Loss and duplicate accounting for one load generator process. Pure: no sockets, no clock.

Each message is a key `(sender slot << 32) | seq`. The sender records how many
deliveries it expects (`sent`), every receiver records what arrived (`received`), and a
message is *settled* once it is older than the grace period: its deliveries are then

    delivered = min(arrived, expected)      lost = expected - delivered

so `expected == delivered + lost` holds exactly, message by message. What does not fit
that identity is counted on the side, never mixed in:

- `duplicates`: the same receiver got the same message twice (a roaring bitmap of
  message keys per receiver catches it);
- `surplus`: more distinct receivers than expected (someone not on the list got it);
- `late`: arrived after its message was settled (already counted lost);
- `unexpected`: a message this process never sent (should never happen: tenants are
  per worker, so every sender of a receiver's tenant lives in the same process).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields
from typing import Any

from pyroaring import BitMap64

SEQ_BITS = 32
SEQ_MASK = (1 << SEQ_BITS) - 1


def message_key(slot: int, seq: int) -> int:
    return (slot << SEQ_BITS) | seq


@dataclass
class Counters:
    """Cumulative counts; the master sums workers' latest snapshots field by field."""

    sent: int = 0
    direct: int = 0
    team: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    surplus: int = 0
    late: int = 0
    unexpected: int = 0
    pending: int = 0
    acks: int = 0
    acks_missing: int = 0
    ack_undelivered: int = 0
    ack_mismatch: int = 0
    errors: int = 0
    send_failed: int = 0
    disconnects: int = 0
    reconnects: int = 0
    ready: int = 0
    first_send: float = 0.0
    last_send: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def total(cls, snapshots: list[dict[str, Any]]) -> Counters:
        """Sum of snapshots (times: earliest first send, latest last send)."""
        out = cls()
        for snap in snapshots:
            for f in fields(cls):
                value = snap.get(f.name, 0) or 0
                if f.name == "first_send":
                    if value and (not out.first_send or value < out.first_send):
                        out.first_send = value
                elif f.name == "last_send":
                    out.last_send = max(out.last_send, value)
                else:
                    setattr(out, f.name, getattr(out, f.name) + value)
        return out


class Ledger:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.counters = Counters()
        self._pending: dict[int, list[int]] = {}  # key -> [expected, arrived, is team]
        self._order: deque[tuple[float, int]] = deque()  # (sent at, key), oldest first
        self._seen: dict[int, BitMap64] = {}  # receiver slot -> keys it got
        self._settled_upto: dict[int, int] = {}  # sender slot -> highest settled seq

    def sent(self, key: int, expected: int, now: float, team: bool = False) -> None:
        c = self.counters
        c.sent += 1
        if team:
            c.team += 1
        else:
            c.direct += 1
        if not c.first_send:
            c.first_send = now
        c.last_send = now
        self._pending[key] = [expected, 0, int(team)]
        self._order.append((now, key))

    def cancel(self, key: int) -> None:
        """The send failed before the message left: it was never sent, nothing is expected."""
        entry = self._pending.pop(key, None)
        if entry is not None:
            self.counters.sent -= 1
            self.counters.send_failed += 1
            if entry[2]:
                self.counters.team -= 1
            else:
                self.counters.direct -= 1

    def received(self, receiver: int, key: int) -> bool:
        """Record an arrival; False when it is a duplicate, late or unexpected."""
        seen = self._seen.get(receiver)
        if seen is None:
            seen = self._seen[receiver] = BitMap64()
        if key in seen:
            self.counters.duplicates += 1
            return False
        seen.add(key)
        entry = self._pending.get(key)
        if entry is None:
            slot, seq = key >> SEQ_BITS, key & SEQ_MASK
            if seq <= self._settled_upto.get(slot, -1):
                self.counters.late += 1
            else:
                self.counters.unexpected += 1
            return False
        entry[1] += 1
        return True

    def settle(self, now: float, everything: bool = False) -> None:
        """Close the books on messages older than the grace period (or on all of them)."""
        c = self.counters
        cutoff = now - self.grace_s
        while self._order and (everything or self._order[0][0] <= cutoff):
            _, key = self._order.popleft()
            entry = self._pending.pop(key, None)
            if entry is None:
                continue  # cancelled
            expected, arrived, _ = entry
            got = min(arrived, expected)
            c.expected += expected
            c.delivered += got
            c.lost += expected - got
            c.surplus += arrived - got
            slot, seq = key >> SEQ_BITS, key & SEQ_MASK
            if seq > self._settled_upto.get(slot, -1):
                self._settled_upto[slot] = seq

    def snapshot(self) -> dict[str, Any]:
        self.counters.pending = len(self._pending)
        return self.counters.to_json()
