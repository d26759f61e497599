"""`--history` as one sidecar runs it: which store, and where it plugs in.

The sidecar's server (`wsop.sidecar.app`) calls this at its few seams — start (the
in-memory sweep), a new membership (logs to their new owners), stop (logs to the owners
on the ring without us), a handshake with `?since=` (`recovery.start`), a scrape (the
history's tallies) — and this wires the rest once: delivery records through the store
(`wsop.sidecar.delivery.Recorder`), presence reports a Redis data loss to it, the ACL
keeps recently disconnected users recipients of team messages for a window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from wsop.acl.live import LiveAcl
from wsop.sidecar.config import SidecarConfig
from wsop.sidecar.delivery import Delivery
from wsop.sidecar.history_memory import MemoryStore
from wsop.sidecar.history_redis import RedisHistory
from wsop.sidecar.metrics import SidecarMetrics
from wsop.sidecar.outbox import Outbox
from wsop.sidecar.presence import Presence
from wsop.sidecar.recovery import HistoryMetrics, Recovery
from wsop.sidecar.router import Router

SWEEP_INTERVAL_S = 1.0


class SidecarHistory:
    def __init__(
        self,
        config: SidecarConfig,
        acl: LiveAcl,
        router: Router,
        delivery: Delivery,
        presence: Presence,
        outbox: Outbox,
        metrics: SidecarMetrics,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.config = config
        self.metrics = HistoryMetrics(metrics.registry)
        self.store: MemoryStore | RedisHistory | None = None
        limits = config.history_limits
        if config.history == "memory":
            self.store = MemoryStore(config.name, limits, router.owner, delivery.peers)
            delivery.on_history_item = self.store.on_item
        elif config.history == "redis":
            self.store = RedisHistory(acl.client, limits, self.metrics, spawn)
        delivery.history = self.store
        if self.store is not None:  # offline users stay recipients for a window: recorded
            acl.recent_window_s = config.history_age_s
            presence.on_data_lost = self._data_lost
        metrics.before_render.append(self.numbers)
        self.recovery = Recovery(self.store, acl, outbox, self.metrics, spawn)
        self._spawn = spawn

    def _data_lost(self) -> None:
        """Presence found Redis empty: the loss is at most a heartbeat (and a bit) old."""
        assert self.store is not None
        self.store.data_lost(self.config.heartbeat_s + 1)

    def numbers(self) -> None:
        """At each scrape: the in-memory history's own tallies onto its metrics."""
        store, metrics = self.store, self.metrics
        if isinstance(store, MemoryStore):
            history = store.history
            metrics.entries.set(history.entries)
            metrics.bytes.set(history.bytes)
            metrics.logs.set(len(history.logs))
            metrics.evicted.sync(history.evicted)
            metrics.handovers.sync(store.handovers)

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        """What runs as long as the sidecar: the in-memory sweep (age, stray logs)."""
        return [self._sweep(self.store)] if isinstance(self.store, MemoryStore) else []

    @staticmethod
    async def _sweep(store: MemoryStore) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            store.sweep()

    def adopted(self, placement: Any) -> None:
        """A new membership: in-memory logs of users with another owner now go to it."""
        if isinstance(self.store, MemoryStore):
            self._spawn(self.store.hand_over(placement))

    async def leaving(self, routing: dict[str, str], placement_for: Callable[..., Any]) -> None:
        """This sidecar stops: its in-memory logs go to their owners on the ring without
        it (a Redis history is shared already: nothing to hand over)."""
        if isinstance(self.store, RedisHistory):
            await self.store.close()
            return
        others = {n: u for n, u in routing.items() if n != self.config.name}
        if not isinstance(self.store, MemoryStore) or not others or not self.store.history.logs:
            return
        placement = await asyncio.to_thread(placement_for, others)
        await self.store.hand_over(placement)
