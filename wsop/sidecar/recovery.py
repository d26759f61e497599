"""Recovery at reconnect: a client that comes back with `?since=OFFSET` gets the messages
it missed, in order, then `{"type":"recovered",...}`, before any live message.

The session is registered first (so live deliveries find it) with `held` set: live
frames queue behind the replay instead of being written. Then the history is read — our
own log, the owner's (`wsop.sidecar.history_memory`), or Redis
(`wsop.sidecar.history_redis`) — and the team messages in the replay are checked again
against the team bitmaps: a user removed from every team a message went to is not sent
it. Last, in one step of the event loop: the replay, `recovered`, and the held live
frames, without those the replay already had (same epoch, seq ≤ what the log had issued
when read), so nothing is reordered, lost or sent twice.

Bounded work for a client that reconnects in a loop: a replay is at most one log's
`max_messages` entries and one pipeline of GETBITs; a refused one costs a parse.

`make_store` builds the backend `--history` names; `HistoryMetrics` are its numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Final, Protocol

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from wsop import protocol
from wsop.acl.live import LiveAcl
from wsop.sidecar.history import Replay
from wsop.sidecar.metrics import TalliedCounter
from wsop.sidecar.outbox import Outbox

log = logging.getLogger("wsop.sidecar.recovery")

REPLAY_TIMEOUT_S: Final = 5.0
"""A replay that takes longer (Redis or the owner unreachable) ends `unavailable`."""


class HistoryStore(Protocol):
    sync: bool
    shared: bool

    async def read(self, tenant: str, user: Hashable, since: str) -> Replay: ...

    def data_lost(self, before_s: float) -> None: ...


class Session(Protocol):
    """A client connection as recovery sees it (`ClientSession`)."""

    ident: Any
    index: int
    held: list[tuple[str, bytes]] | None
    replayed: tuple[str, int] | None


def team_names(frame: str) -> list[str] | None:
    """The teams a recorded message went to (None: a direct message)."""
    if '"teams":' not in frame:  # (cheap: most frames are not team messages)
        return None
    teams = json.loads(frame).get("teams")
    return teams if isinstance(teams, list) else None


def teams_in(entries: list[tuple[str, str]]) -> list[str]:
    """Every team the recorded messages went to (what a replay re-checks)."""
    return sorted({t for _, frame in entries for t in team_names(frame) or ()})


def still_readable(
    entries: list[tuple[str, str]], readable: dict[str, bool]
) -> list[tuple[str, str]]:
    """The entries the user may read *now*: direct messages, and team messages to at
    least one team it is still a member of (`readable`: team -> membership now)."""
    kept = []
    for entry in entries:
        teams = team_names(entry[1])
        if teams is None or any(readable.get(t) for t in teams):
            kept.append(entry)
    return kept


class HistoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.recoveries = Counter(
            "wsop_recoveries",
            "Reconnects with ?since=, by result: ok, or why the history could not vouch",
            ["result"],
            registry=registry,
        )
        self.replayed = Counter(
            "wsop_recovered_messages", "Messages sent in replays", registry=registry
        )
        self.withheld = Counter(
            "wsop_recovery_withheld",
            "Team messages left out of a replay: the user is no longer in any of its teams",
            registry=registry,
        )
        self.evicted = TalliedCounter(
            Counter(
                "wsop_history_evicted",
                "History entries evicted, by reason (count, age, memory)",
                ["reason"],
                registry=registry,
            )
        )
        self.handovers = TalliedCounter(
            Counter(
                "wsop_history_handovers",
                "User logs handed to a new owner (sent) or received (installed, merged, empty)",
                ["result"],
                registry=registry,
            )
        )
        self.record_failures = Counter(
            "wsop_history_record_failures",
            "Recipients whose message the history could not record (delivered without offset)",
            registry=registry,
        )
        self.entries = Gauge(
            "wsop_history_entries", "Entries in this sidecar's in-memory history", registry=registry
        )
        self.bytes = Gauge(
            "wsop_history_bytes",
            "Bytes this sidecar's in-memory history accounts for (its cap applies to this)",
            registry=registry,
        )
        self.logs = Gauge("wsop_history_logs", "User logs held in memory", registry=registry)


class Recovery:
    """Replays for one sidecar's reconnecting clients."""

    def __init__(
        self,
        store: HistoryStore | None,
        acl: LiveAcl,
        outbox: Outbox,
        metrics: HistoryMetrics,
        spawn: Callable[[Any], None],
    ) -> None:
        self.store = store
        self.acl = acl
        self.outbox = outbox
        self.metrics = metrics
        self._spawn = spawn

    def start(self, session: Session, since: str) -> None:
        """Hold the session's live frames and replay what it missed since `since`."""
        if self.store is None:
            self._finish(session, Replay(False, protocol.HISTORY_DISABLED))
            return
        session.held = []
        self._spawn(self._recover(session, since))

    async def _recover(self, session: Session, since: str) -> None:
        replay = Replay(False, protocol.HISTORY_UNAVAILABLE)
        try:
            replay = await asyncio.wait_for(self._read(session, since), REPLAY_TIMEOUT_S)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "replay for %s/%s failed: %s", session.ident.tenant, session.ident.user, exc
            )
        finally:  # whatever happened, the held frames go out
            self._finish(session, replay)

    async def _read(self, session: Session, since: str) -> Replay:
        assert self.store is not None
        tenant = session.ident.tenant
        replay = await self.store.read(tenant, session.ident.user, since)
        if not replay.ok or not replay.entries:
            return replay
        readable = await self.acl.readable(tenant, session.index, teams_in(replay.entries))
        kept = still_readable(replay.entries, readable)
        self.metrics.withheld.inc(len(replay.entries) - len(kept))
        replay.entries = kept
        return replay

    def _finish(self, session: Session, replay: Replay) -> None:
        """The replay, `recovered`, then the live frames held meanwhile: in one step."""
        send = self.outbox.send_one
        held, session.held = session.held or [], None
        if replay.ok:
            for offset, frame in replay.entries:
                send(session, protocol.with_offset(frame, offset).encode())
            send(session, protocol.encode_recovered(True, len(replay.entries)).encode())
            self.metrics.replayed.inc(len(replay.entries))
            self.metrics.recoveries.labels("ok").inc()
        else:
            send(session, protocol.encode_recovered(False, reason=replay.reason).encode())
            self.metrics.recoveries.labels(replay.reason or "unknown").inc()
        for offset, data in held:
            if not (replay.ok and _replayed(offset, replay)):
                send(session, data)
        if replay.ok and replay.entries:
            # A message recorded before the read but delivered after this (the Redis
            # history records, then delivers): the replay carried it, live it would come
            # twice. Deliveries check this mark (`LocalWrites._deliver_with_offsets`).
            session.replayed = (replay.epoch, replay.upto)


def _replayed(offset: str, replay: Replay) -> bool:
    """A live frame the replay already contained (it was recorded before the read)."""
    return protocol.offset_within(offset, replay.epoch, replay.upto)


def now_ms() -> int:
    return int(time.time() * 1000)
