"""One send schedule for all of a worker's connections. Pure: numbers in, counts out.

Every connection of a worker sends at the same per-user rate, so instead of one timer
per connection (a greenlet and a wake-up per message: the old generator's main cost)
the worker keeps one absolute schedule at the total rate and hands its messages to the
connections in a fixed round-robin order. Each connection then still sends every
`1 / per_user_rate` seconds, and one wake-up sends everything that came due since the
last one.

A generator that falls behind (it is out of CPU) does not burst to catch up: a backlog
of more than `max_backlog_s` of messages is dropped and counted (`behind`). That keeps
the achieved rate at the generator's capacity — a plateau, not a collapse — and says
who the limit was.
"""

from __future__ import annotations

import math

MAX_BACKLOG_S = 1.0


class Pacer:
    """Messages due at a total `rate` on an absolute schedule since `set_rate`."""

    def __init__(self, max_backlog_s: float = MAX_BACKLOG_S) -> None:
        self.max_backlog_s = max_backlog_s
        self.rate = 0.0
        self._t0 = 0.0
        self._issued = 0  # handed out (sent or skipped) since t0
        self.scheduled = 0  # every message that came due, over the pacer's life
        self.behind = 0  # of those, dropped because the generator was too far behind

    def set_rate(self, rate: float, now: float) -> None:
        """Start a new schedule at `rate` msg/s; whatever the old one still owed is dropped."""
        self.close(now)
        self.rate, self._t0, self._issued = max(0.0, rate), now, 0

    def close(self, now: float) -> None:
        """End the current schedule: what came due and was never taken counts as behind."""
        if self.rate > 0:
            owed = self._target(now) - self._issued
            self.scheduled += owed
            self.behind += owed
            self._issued += owed

    def _target(self, now: float) -> int:
        return int((now - self._t0) * self.rate) + 1 if now >= self._t0 else 0

    def due(self, now: float) -> int:
        """How many messages are due now (the first one at once, then one per 1/rate s)."""
        if self.rate <= 0:
            return 0
        backlog = self._target(now) - self._issued
        limit = max(1, math.ceil(self.rate * self.max_backlog_s))
        if backlog > limit:
            dropped = backlog - 1  # keep the schedule; send the one due now
            self._issued += dropped
            self.scheduled += dropped
            self.behind += dropped
            backlog = 1
        return max(0, backlog)

    def take(self, n: int) -> None:
        """`n` of the due messages were handed out (sent, or skipped for a reason)."""
        self._issued += n
        self.scheduled += n

    def wait_s(self, now: float) -> float:
        """Seconds until the next message is due (0: one is due now; inf: rate 0)."""
        if self.rate <= 0:
            return math.inf
        return max(0.0, self._t0 + self._issued / self.rate - now)
