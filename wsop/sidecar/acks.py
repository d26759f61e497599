"""Acks that wait for other sidecars: pure bookkeeping, no I/O.

A message forwarded to other owners is answered (an ack frame to the client, or an
`Ack` item back to the forwarding peer) only when every owner has said how many users
it reached. Anything that never answers is counted as undelivered after a timeout, so
an ack always comes and never claims more than was delivered.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class PendingAck:
    """A message waiting for its owners' answers; `done` runs once all have answered."""

    conn: Any
    msg_id: str | None
    started: float
    delivered: int = 0
    undelivered: int = 0
    waiting: dict[str, int] = field(default_factory=dict)  # peer (or a pseudo-peer) -> users
    done: Callable[[PendingAck], None] = lambda _: None


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
        """Book one peer's answer; completes the ack when it was the last one awaited."""
        pending = self._open.get(ack_id)
        if pending is None or peer not in pending.waiting:
            return  # late, duplicate or unknown: nothing to do
        del pending.waiting[peer]
        pending.delivered += delivered
        pending.undelivered += undelivered
        self.close_if_done(ack_id)

    def expire(self, now: float, timeout: float) -> int:
        """Give up on answers older than `timeout`: their users count as undelivered."""
        expired = 0
        for ack_id, pending in list(self._open.items()):
            if now - pending.started > timeout:
                for peer, count in list(pending.waiting.items()):
                    expired += count
                    self.settle(ack_id, peer, 0, count)
        return expired

    def __len__(self) -> int:
        return len(self._open)
