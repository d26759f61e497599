"""Settled losses a `?since=` replay may still deliver (docs/loadtest.md, "Recovery").

A user away during a fault misses messages; the ledger settles them after the grace
period as `lost_disconnected` (or `reported_undelivered`, when the ack said so). With a
history the user's reconnect replays them, possibly after that settling: then the loss
was a late delivery. The ledger remembers, per settled message, which missing recipient
was booked in which class, so a replayed arrival can move exactly that one delivery back
(`take`), once. Bounded: the oldest are forgotten first. Pure.

It also remembers which deliveries came by replay, to name a duplicate that involves
one: the replay re-sent what the user had (`recovered_duplicates`), or a live copy
followed the replay that already delivered it (`live_after_replay`; the protocol says
the stack leaves those out).
"""

from __future__ import annotations

from typing import Any

TRACKED = 200_000  # settled messages remembered; past it a replay of the oldest stays late


class Replayable:
    def __init__(self, limit: int = TRACKED) -> None:
        self.limit = limit
        self._by_key: dict[int, tuple[int, dict[int, str]]] = {}  # key -> (window, slot -> class)
        self._replayed: dict[tuple[int, int], None] = {}  # (receiver, key), oldest first

    def remember(
        self, key: int, window: int, away: list[int], present: list[int], reported: int
    ) -> None:
        """`away`: missing recipients booked lost_disconnected; the first `reported` of
        `present` (missing, not away) were booked reported_undelivered."""
        kinds = dict.fromkeys(away, "lost_disconnected")
        kinds.update(dict.fromkeys(present[:reported], "reported_undelivered"))
        if not kinds:
            return
        self._by_key[key] = (window, kinds)
        if len(self._by_key) > self.limit:
            del self._by_key[next(iter(self._by_key))]  # the oldest

    def arrived(self, receiver: int, key: int) -> None:
        """A replayed delivery of `key` to `receiver` was booked."""
        self._replayed[(receiver, key)] = None
        if len(self._replayed) > self.limit:
            del self._replayed[next(iter(self._replayed))]

    def duplicate(self, receiver: int, key: int, replay: bool) -> str | None:
        """The counter naming a duplicate delivery that involves a replay, if it does."""
        if replay:
            return "recovered_duplicates"
        return "live_after_replay" if (receiver, key) in self._replayed else None

    def take(self, key: int, receiver: int) -> tuple[int, str] | None:
        """(window, loss class) the replayed delivery of `key` to `receiver` was booked
        in, now forgotten; None if it was not a remembered loss."""
        entry = self._by_key.get(key)
        if entry is None:
            return None
        window, kinds = entry
        kind = kinds.pop(receiver, None)
        if not kinds:
            del self._by_key[key]
        return None if kind is None else (window, kind)

    def deliver(self, key: int, receiver: int, ledger: Any) -> bool:
        """A replay delivered what settling booked lost for `receiver`: move that one
        delivery from its loss class to `delivered` in `ledger`'s counters and window."""
        taken = self.take(key, receiver)
        if taken is None:
            return False
        window, kind = taken
        self.arrived(receiver, key)
        for tally in (ledger.counters.__dict__, ledger.windows[window]):
            tally["lost"] -= 1
            tally[kind] -= 1
            tally["delivered"] += 1
            tally["recovered_messages"] += 1
            tally["recovered_late"] += 1
        return True

    def __len__(self) -> int:
        return len(self._by_key)
