"""Per-user message history on the user's ring owner: the in-memory backend (pure).

Every message a sidecar delivers *as the recipient's owner* is recorded in that user's
log first, and the live frame carries its position there (`"offset":"EPOCH:SEQ"`,
`wsop.protocol`). One log per (tenant, user): a user's offsets are a single sequence in
the order the owner delivered, so live order is offset order, and a client that
reconnects with `?since=` gets exactly the entries after it — nothing it saw live twice.

Bounds (`HistoryLimits`): per log by count (`max_messages`) and by age (`max_age_s`),
and for the whole sidecar by bytes (`max_bytes`: entries are evicted oldest first when
it is reached). A message's frame is one `Body` shared by all its recipients here, so a
team message costs its frame once plus a small entry per recipient. Every eviction is
counted by reason (`evicted`).

A replay is *proved complete* (`Replay.ok`) only when the log still holds what follows
the client's offset and the client was last served within the window: a user is
recorded while online or "recent" (disconnected less than a window ago — the sidecar
makes team resolution include those), so an offset younger than the window means the
client was offline for less than it, and nothing meant for it went unrecorded.

Logs move with ownership: `take` removes a log for the sidecar that now owns the user,
`give` installs or merges one (`wsop.sidecar.handover`). The Redis Streams backend with
the same semantics is `wsop.sidecar.history_redis`.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from wsop import protocol
from wsop.errors import UsageError

Key = tuple[str, Hashable]
"""(tenant, user): logs never mix tenants, and a user only ever reads its own."""

ENTRY_BYTES: Final = 120
"""What one entry costs besides its body (object, list and FIFO slots), for the cap."""
BODY_BYTES: Final = 80
LOG_BYTES: Final = 200


@dataclass(frozen=True)
class HistoryLimits:
    max_messages: int = 100
    max_age_s: float = 120.0
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not (isinstance(self.max_messages, int) and 1 <= self.max_messages <= 100_000):
            raise UsageError(f"history messages must be 1-100000, got {self.max_messages}")
        if not 1 <= self.max_age_s <= 86_400:
            raise UsageError(f"history age must be 1-86400 seconds, got {self.max_age_s}")
        if not (isinstance(self.max_bytes, int) and self.max_bytes >= 1024 * 1024):
            raise UsageError(f"history memory must be at least 1 MiB, got {self.max_bytes}")


class Body:
    """One message's frame, shared by the entries of all its recipients here."""

    __slots__ = ("frame", "refs")

    def __init__(self, frame: str) -> None:
        self.frame = frame
        self.refs = 0


Entry = tuple[int, float, Body, "UserLog"]
"""(seq, recorded at, body, its log): one tuple, in its log and in the sidecar-wide FIFO
(a tuple costs a fraction of an object; this runs once per recipient)."""
SEQ, AT, BODY, LOG = 0, 1, 2, 3


class UserLog:
    __slots__ = ("key", "epoch", "next_seq", "entries", "gone_seq", "gone_at")

    def __init__(self, key: Key, epoch: str, next_seq: int = 1) -> None:
        self.key = key
        self.epoch = epoch
        self.next_seq = next_seq
        self.entries: list[Entry] = []
        self.gone_seq = 0
        """The newest evicted entry's seq (0: none yet) and its time: enough to judge an
        offset pointing exactly at it (the client saw it; is anything missing after?)."""
        self.gone_at = 0.0


@dataclass
class Replay:
    """What a reconnecting client gets: the frames after its offset, or why not."""

    ok: bool
    reason: str | None = None
    entries: list[tuple[str, str]] = field(default_factory=list)
    """(offset, frame without its offset), oldest first."""
    epoch: str | None = None
    upto: int = 0
    """The last seq the log had issued when read: live frames up to it are in `entries`."""


@dataclass
class LogState:
    """A log in transit to the user's new owner (ages instead of clock readings)."""

    epoch: str
    next_seq: int
    entries: list[tuple[int, float, str]] = field(default_factory=list)
    """(seq, age in seconds, frame), oldest first."""
    gone_seq: int = 0
    gone_age: float = 0.0


class Recorder(Protocol):
    """The history as `wsop.sidecar.delivery` sees it (both backends implement it)."""

    sync: bool
    """Records at once (`record_now`); else `record_later` answers when done."""
    shared: bool
    """Every sidecar reaches the same logs (Redis): a message its owner could not be
    sent is recorded by whoever holds it."""

    def record_now(self, tenant: str, users: Sequence[Hashable], frame: str) -> list[str]: ...

    def record_later(
        self,
        tenant: str,
        users: Sequence[Hashable],
        frame: str,
        then: Callable[[list[str]], None],
    ) -> None: ...

    def foreign(self, tenant: str, users: Sequence[Hashable]) -> None:
        """Logs were written here for users another sidecar owns (membership in flux)."""


_PROCESS: Final = secrets.token_hex(4)
_LOGS = itertools.count(1)


def new_epoch() -> str:
    """A log's epoch: unique to this process (random) and to the log (a counter) — a
    syscall per log would cost more than recording its first message."""
    return f"{_PROCESS}{next(_LOGS):x}"


class MemoryHistory:
    """Every log one sidecar owns, bounded as the module docstring says. `now` is a
    monotonic clock reading, passed in so the structure stays pure and testable."""

    def __init__(self, limits: HistoryLimits | None = None) -> None:
        self.limits = limits or HistoryLimits()
        self.logs: dict[Key, UserLog] = {}
        self._fifo: deque[Entry] = deque()
        """Every entry in recording order (evicted ones until the sweep reaches them)."""
        self.bytes = 0
        self.entries = 0
        """Entries held in logs (evicted ones excluded)."""
        self.evicted: Counter[str] = Counter()
        self.lost_before = float("-inf")
        """Offsets served before this time cannot be proved complete (presence was lost:
        users offline then may have gone unrecorded)."""

    # -- recording -----------------------------------------------------------------------

    def record(self, tenant: str, users: Sequence[Hashable], frame: str, now: float) -> list[str]:
        """Append `frame` to each user's log; their offsets, in order.

        This runs once per recipient of every message, so the count bound's eviction
        (every append of a full log) is `_drop_head` inlined, tallied once per call."""
        if not users:
            return []
        count = len(users)
        body = Body(frame)
        body.refs = count
        self.bytes += len(frame) + BODY_BYTES + ENTRY_BYTES * count
        self.entries += count
        offsets: list[str] = []
        max_messages = self.limits.max_messages
        logs, fifo_append, add = self.logs, self._fifo.append, offsets.append
        evicted = 0
        for user in users:
            key = (tenant, user)
            log = logs.get(key)
            if log is None:
                log = logs[key] = UserLog(key, new_epoch())
                self.bytes += LOG_BYTES
            seq = log.next_seq
            log.next_seq = seq + 1
            entry = (seq, now, body, log)
            entries = log.entries
            entries.append(entry)
            fifo_append(entry)
            add(f"{log.epoch}:{seq}")
            if len(entries) > max_messages:  # (never empties the log: one was just added)
                gone_seq, gone_at, gone, _ = entries.pop(0)
                log.gone_seq, log.gone_at = gone_seq, gone_at
                gone.refs -= 1
                if not gone.refs:
                    self.bytes -= len(gone.frame) + BODY_BYTES
                evicted += 1
        if evicted:
            self.entries -= evicted
            self.evicted["count"] += evicted
        if self.bytes > self.limits.max_bytes:
            self.sweep(now)
        return offsets

    def _drop_head(self, log: UserLog, reason: str | None) -> None:
        """Evict the oldest entry of `log` (its FIFO slot is freed when the sweep reaches
        it); `reason` None: it moves to another owner, which is not an eviction."""
        seq, at, body, _ = log.entries.pop(0)
        self.entries -= 1
        log.gone_seq, log.gone_at = seq, at
        if reason is not None:
            self.evicted[reason] += 1
        body.refs -= 1
        if body.refs == 0:
            self.bytes -= len(body.frame) + BODY_BYTES
        if not log.entries:
            self._forget(log)

    def _forget(self, log: UserLog) -> None:
        if self.logs.get(log.key) is log:
            del self.logs[log.key]
            self.bytes -= LOG_BYTES

    def sweep(self, now: float) -> None:
        """Evict what is older than the window, then the oldest until under the cap.
        The FIFO is in recording order: each step looks at its head only. A FIFO entry
        is live while it heads its log (logs only grow at their end, and lose their
        head first), so the FIFO's oldest live entry is its own log's oldest."""
        fifo = self._fifo
        horizon = now - self.limits.max_age_s
        while fifo:
            head = fifo[0]
            log = head[LOG]
            if log.entries and log.entries[0] is head:
                if head[AT] < horizon:
                    reason = "age"
                elif self.bytes > self.limits.max_bytes:
                    reason = "memory"
                else:
                    break
                self._drop_head(log, reason)
            fifo.popleft()
            self.bytes -= ENTRY_BYTES

    # -- replay --------------------------------------------------------------------------

    def read(self, tenant: str, user: Hashable, since: str, now: float) -> Replay:
        """The entries after `since` in the user's own log, if provably complete."""
        parsed = protocol.parse_offset(since)
        if parsed is None:
            return Replay(False, protocol.MALFORMED_OFFSET)
        epoch, seq = parsed
        log = self.logs.get((tenant, user))
        if log is None or log.epoch != epoch or seq >= log.next_seq:
            return Replay(False, protocol.UNKNOWN_OFFSET)
        entries = log.entries
        first = entries[0][SEQ]
        if seq >= first:
            seen_at = entries[seq - first][AT]
        elif seq == log.gone_seq:
            seen_at = log.gone_at
        else:  # what followed the client's offset was evicted
            return Replay(False, protocol.WINDOW_EXCEEDED)
        refused = self.judge(seen_at, now)
        if refused is not None:
            return refused
        after = entries[max(0, seq + 1 - first) :]
        return Replay(
            True,
            entries=[(f"{epoch}:{e[SEQ]}", e[BODY].frame) for e in after],
            epoch=epoch,
            upto=log.next_seq - 1,
        )

    def judge(self, seen_at: float, now: float) -> Replay | None:
        """A refusal when the client's last message is too old to vouch for it: it was
        connected then, so it has been away at most `now - seen_at`."""
        if now - seen_at > self.limits.max_age_s:
            return Replay(False, protocol.WINDOW_EXCEEDED)
        if seen_at < self.lost_before:
            return Replay(False, protocol.PRESENCE_LOST)
        return None

    # -- handing logs to a new owner -----------------------------------------------------

    def keys(self) -> list[Key]:
        return list(self.logs)

    def take(self, key: Key, now: float) -> LogState | None:
        """Remove the log of `key` (its user has a new owner) and return it."""
        log = self.logs.get(key)
        if log is None:
            return None
        state = LogState(log.epoch, log.next_seq, gone_seq=log.gone_seq)
        state.gone_age = now - log.gone_at if log.gone_seq else 0.0
        state.entries = [(e[SEQ], now - e[AT], e[BODY].frame) for e in log.entries]
        while log.entries:
            self._drop_head(log, None)
        return state

    def give(self, key: Key, state: LogState, now: float) -> str:
        """Install a log handed over by the user's previous owner. If this sidecar has
        started a log of its own for the user meanwhile (both recorded while the two
        disagreed about the owner), neither sequence can vouch for the other: the two
        are merged by time into a fresh epoch, and offsets of either fail honestly.
        Returns "installed", "merged" or "empty" (nothing to keep)."""
        entries = [(s, now - a, f) for s, a, f in state.entries]
        mine = self.logs.get(key)
        if mine is None:
            if not entries:
                return "empty"
            log = self.logs[key] = UserLog(key, state.epoch, state.next_seq)
            self.bytes += LOG_BYTES
            log.gone_seq, log.gone_at = state.gone_seq, now - state.gone_age
            self._append(log, entries)
            return "installed"
        timeline = [(at, frame) for _, at, frame in entries]
        timeline += [(e[AT], e[BODY].frame) for e in mine.entries]
        timeline.sort(key=lambda item: item[0])
        while mine.entries:
            self._drop_head(mine, None)
        if not timeline:
            return "empty"
        log = self.logs[key] = UserLog(key, new_epoch())
        self.bytes += LOG_BYTES
        self._append(log, [(i + 1, at, frame) for i, (at, frame) in enumerate(timeline)])
        log.next_seq = len(timeline) + 1
        return "merged"

    def _append(self, log: UserLog, items: list[tuple[int, float, str]]) -> None:
        """Entries with their own seqs and times (a handed or merged log), then the
        usual bounds: the count at once, age and memory at the next sweep."""
        for seq, at, frame in items:
            body = Body(frame)
            body.refs = 1
            entry = (seq, at, body, log)
            log.entries.append(entry)
            self._fifo.append(entry)
            self.bytes += len(frame) + BODY_BYTES + ENTRY_BYTES
            self.entries += 1
        while len(log.entries) > self.limits.max_messages:
            self._drop_head(log, "count")
