"""Acks that wait for other sidecars: pure bookkeeping, no I/O.

A message forwarded to other sidecars (owners, or holders of a user's connection) is
answered — an ack frame to the client, or an `Ack` item back to the forwarding peer —
only when every item it was forwarded in has been answered with how many users it
reached. Anything that never answers is counted as undelivered after a timeout, so an
ack always comes and never claims more than was confirmed.

A message may travel in several items to one peer (a huge team is planned in slices,
a long user list is split), so each awaited peer counts *items* outstanding and *users*
not yet answered for: the ack completes when no item is outstanding, and a timeout
reports the users nobody answered for.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Awaited:
    """What one peer (or a pseudo-peer such as a retry) still owes a pending ack."""

    items: int = 0
    users: int = 0


@dataclass(slots=True)
class PendingAck:
    """A message waiting for its answers; `done` runs once, when none is outstanding."""

    conn: Any
    msg_id: str | None
    started: float
    delivered: int = 0
    undelivered: int = 0
    waiting: dict[str, Awaited] = field(default_factory=dict)
    done: Callable[[PendingAck], None] = lambda _: None

    def expect(self, peer: str, users: int) -> None:
        """Book one item for `users` users that `peer` must answer (before sending it:
        a link already down answers synchronously, as lost)."""
        awaited = self.waiting.get(peer)
        if awaited is None:
            awaited = self.waiting[peer] = Awaited()
        awaited.items += 1
        awaited.users += users


class AckBook:
    def __init__(self) -> None:
        self._open: dict[int, PendingAck] = {}
        self._ids = itertools.count(1)

    def open(self, pending: PendingAck) -> int:
        """Register a pending ack; returns the id its answers will carry."""
        ack_id = next(self._ids)
        self._open[ack_id] = pending
        return ack_id

    def close_if_done(self, ack_id: int) -> None:
        pending = self._open.get(ack_id)
        if pending is not None and not pending.waiting:
            del self._open[ack_id]
            pending.done(pending)

    def settle(self, ack_id: int, peer: str, delivered: int, undelivered: int) -> None:
        """Book the answer to one item sent to `peer`; completes the ack when it was the
        last one outstanding."""
        pending = self._open.get(ack_id)
        if pending is None:
            return  # late (expired), or unknown: nothing to do
        awaited = pending.waiting.get(peer)
        if awaited is None:
            return  # an answer nobody asked for
        awaited.items -= 1
        awaited.users = max(0, awaited.users - delivered - undelivered)
        pending.delivered += delivered
        pending.undelivered += undelivered
        if awaited.items <= 0:
            del pending.waiting[peer]
            self.close_if_done(ack_id)

    def expire(self, now: float, timeout: float) -> int:
        """Give up on answers older than `timeout`: their users count as undelivered."""
        expired = 0
        for ack_id, pending in list(self._open.items()):
            if now - pending.started > timeout:
                for awaited in pending.waiting.values():
                    expired += awaited.users
                    pending.undelivered += awaited.users
                pending.waiting.clear()
                self.close_if_done(ack_id)
        return expired

    def waiting_on(self, conn: Any) -> int:
        """How many acks for `conn` are still open (a moving connection closes at 0)."""
        return sum(1 for pending in self._open.values() if pending.conn is conn)

    def __len__(self) -> int:
        return len(self._open)
