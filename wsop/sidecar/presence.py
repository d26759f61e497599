"""Presence that heals: the sidecar's heartbeat, reaper, re-assertion and the team-message
guard (the Redis side is `wsop.acl.leases`).

Every `heartbeat_s` a sidecar renews its lease and reads the data epoch in one script:

- **dead sidecars**: leases that expired are claimed (one reaper per victim) and the
  victim's per-sidecar bitmaps released with RELEASE_LUA, tenant by tenant. A sidecar
  killed at t renewed its lease at some t0 > t − heartbeat, so its lease ends before
  t + lease and the next heartbeat of any live sidecar reaps it: its users are offline
  within **lease + heartbeat** (10 s + 2 s by default), plus the release itself
  (milliseconds a tenant). A clean shutdown releases at once and drops the lease.
- **Redis lost its data**: the epoch changed or vanished (or our own lease did): every
  connection this sidecar holds is asserted again — per tenant, in bulk — and the
  sidecar joins the new epoch's ready set.
- **team messages**: the epoch is read in the resolution's own pipeline; one that
  differs from the epoch whose online bitmap we trust waits (≤ `wait_s`) until every
  live member is ready, then resolves again. Past the wait it proceeds, and every team
  message resolved while presence is known to be incomplete is counted in
  `wsop_presence_incomplete_total`: never a silent skip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from wsop.acl.leases import Beat, LeaseStore, waiting_for
from wsop.acl.live import LiveAcl, UserId
from wsop.auth import Identity
from wsop.checks import check_seconds
from wsop.errors import UsageError

log = logging.getLogger("wsop.sidecar.presence")

SETTLE_POLL_S = 0.05
LOG_EVERY_S = 30.0


def check_timings(heartbeat_s: float, lease_s: float, wait_s: float) -> None:
    """Refuse settings under which a live sidecar could be taken for dead."""
    for flag, value in (("heartbeat", heartbeat_s), ("lease", lease_s), ("wait", wait_s)):
        check_seconds(value, f"presence {flag}", allow_zero=False)  # (finite: inf, nan too)
    if not lease_s > 2 * heartbeat_s:
        raise UsageError(
            f"presence lease ({lease_s} s) must be more than twice the heartbeat "
            f"({heartbeat_s} s): one late heartbeat must not get a live sidecar reaped"
        )


@dataclass(frozen=True)
class PresenceTimings:
    heartbeat_s: float = 2.0
    lease_s: float = 10.0
    wait_s: float = 5.0

    def __post_init__(self) -> None:
        check_timings(self.heartbeat_s, self.lease_s, self.wait_s)

    @property
    def lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    @property
    def reap_bound_s(self) -> float:
        """A killed sidecar's users are offline within this (plus the release itself)."""
        return self.lease_s + self.heartbeat_s


class ReapGate:
    """Reap only after renewing our own lease without a gap for a whole lease.

    Leases run on Redis time, which goes on while nobody can reach Redis: after an
    outage longer than a lease every lease has expired, and the first sidecar back
    would reap all the others although they are alive. Waiting one lease of our own
    uninterrupted heartbeats gives each of them the time to renew first. In steady
    state the gate is long open and the reap bound is unchanged.
    """

    def __init__(self, lease_ms: int) -> None:
        self.lease_ms = lease_ms
        self.since_ms: int | None = None  # Redis time of the first beat of the streak
        self.last_ms: int | None = None

    def beat(self, now_ms: int) -> None:
        if self.last_ms is None or now_ms - self.last_ms > self.lease_ms // 2:
            self.since_ms = now_ms  # first beat, or a gap: a new streak
        self.last_ms = now_ms

    def failed(self) -> None:
        self.since_ms = self.last_ms = None

    def open(self, now_ms: int) -> bool:
        return self.since_ms is not None and now_ms - self.since_ms >= self.lease_ms


class Held(Protocol):
    """A client connection as presence sees it (`ClientSession`)."""

    ident: Identity
    index: int


class PresenceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reaped = Counter(
            "wsop_presence_reaped",
            "Dead sidecars (expired leases) whose presence this sidecar released",
            registry=registry,
        )
        self.reasserted = Counter(
            "wsop_presence_reasserted",
            "Times this sidecar asserted all its connections again (epoch: Redis lost "
            "its data; lease: our lease had vanished)",
            ["reason"],
            registry=registry,
        )
        self.reasserted_conns = Counter(
            "wsop_presence_reasserted_connections",
            "Connections asserted again by those re-assertions",
            registry=registry,
        )
        self.incomplete = Counter(
            "wsop_presence_incomplete",
            "Team messages resolved while some live sidecar had not re-asserted its users",
            registry=registry,
        )
        self.failures = Counter(
            "wsop_presence_heartbeat_failures", "Heartbeats that failed", registry=registry
        )
        self.last_beat = Gauge(
            "wsop_presence_last_heartbeat_timestamp_seconds",
            "Unix time of the last successful heartbeat",
            registry=registry,
        )
        self.epoch = Gauge(
            "wsop_presence_epoch_info", "The epoch this sidecar serves under", ["epoch"],
            registry=registry,
        )  # fmt: skip


class Presence:
    """One sidecar's side of presence healing (see the module docstring)."""

    def __init__(
        self,
        name: str,
        acl: LiveAcl,
        timings: PresenceTimings,
        members: Callable[[], Iterable[str]],
        held: Callable[[], Iterable[Held]],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.acl = acl
        self.timings = timings
        self.leases = LeaseStore(acl.client, name)
        self.metrics = PresenceMetrics(registry)
        self._members = members
        self._held = held
        self.asserted: str | None = None  # epoch our connections are asserted under
        self.settled: str | None = None  # epoch we stopped waiting for...
        self.complete = False  # ...and whether every live member was ready under it
        self.waiting: set[str] = set()
        self.last_beat: float | None = None
        self.reaped = 0
        self.reasserted = 0
        self.gate = ReapGate(timings.lease_ms)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._reaping: asyncio.Task[None] | None = None
        self._settling: asyncio.Task[bool] | None = None
        self._logged_failure = 0.0
        self.on_data_lost: Callable[[], None] | None = None
        """Called when Redis is found to have lost its data (the recent bitmaps too)."""

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        beat = await self.sync()
        await self._check_ready(beat.epoch)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._settling, self._reaping):
            if task is not None:
                task.cancel()

    async def drop(self) -> None:
        """After the shutdown released our presence: no lease left for a reaper."""
        await self.leases.drop(self.asserted)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.timings.heartbeat_s)
            try:
                beat = await self.sync()
                idle = self._reaping is None or self._reaping.done()
                if beat.expired and idle and self.gate.open(beat.now_ms):
                    # its own task: a long release must not delay our next lease renewal
                    self._reaping = asyncio.create_task(self._reap(beat))
                if self.settled != self.asserted or not self.complete:
                    await self._check_ready(beat.epoch)
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
            except Exception:  # never let the heartbeat die
                log.exception("presence heartbeat failed")

    def _failed(self, exc: BaseException) -> None:
        self.gate.failed()
        self.metrics.failures.inc()
        now = time.monotonic()
        if now - self._logged_failure > LOG_EVERY_S:
            self._logged_failure = now
            log.warning("presence heartbeat failed (retrying every %s s): %s",
                        self.timings.heartbeat_s, exc)  # fmt: skip

    # -- heartbeat, re-assertion -------------------------------------------------------

    async def sync(self) -> Beat:
        """One heartbeat; re-asserts everything we hold if the beat says it was lost."""
        async with self._lock:
            beat = await self.leases.beat(self.timings.lease_ms, self.asserted)
            self.gate.beat(beat.now_ms)
            self.last_beat = time.time()
            self.metrics.last_beat.set(self.last_beat)
            first = self.asserted is None
            lost = beat.lease_lost and not first
            if beat.epoch == self.asserted and not lost and not beat.being_reaped:
                return beat
            if not first and beat.epoch != self.asserted and self.on_data_lost is not None:
                self.on_data_lost()  # (before any await: the loss is at most a beat old)
            if beat.being_reaped or lost:
                await self._wait_for_reaper()
            count = await self._reassert()
            await self.leases.mark_ready(beat.epoch)
            if not first:
                reason = "epoch" if beat.epoch != self.asserted else "lease"
                self.reasserted += 1
                self.metrics.reasserted.labels(reason).inc()
                self.metrics.reasserted_conns.inc(count)
                log.warning(
                    "presence %s (%s -> %s): re-asserted %d connection(s)",
                    "epoch changed, Redis lost its data" if reason == "epoch" else "lease lost",
                    self.asserted, beat.epoch, count,
                )  # fmt: skip
            self.asserted = beat.epoch
            self.metrics.epoch.clear()
            self.metrics.epoch.labels(beat.epoch).set(1)
            return beat

    async def _wait_for_reaper(self) -> None:
        """Someone is releasing our presence (we looked dead): re-asserting before it is
        done would be undone. Its lock expires after a lease even if it died."""
        deadline = time.monotonic() + self.timings.lease_s
        while time.monotonic() < deadline and await self.leases.being_reaped():
            await asyncio.sleep(SETTLE_POLL_S)

    async def _reassert(self) -> int:
        """Assert every connection we hold, in bulk per tenant."""
        self.acl.forget_caches()
        sessions = list(self._held())
        by_tenant: dict[str, dict[UserId, list[Held]]] = {}
        for session in sessions:
            users = by_tenant.setdefault(session.ident.tenant, {})
            users.setdefault(session.ident.user, []).append(session)
        for tenant, users in by_tenant.items():
            if tenant in self.acl.string_tenants:  # the directory may be new: map again
                names = list(users)
                indices = await self.acl.directory_indices(tenant, [str(u) for u in names])
                for user, index in zip(names, indices, strict=True):
                    for session in users[user]:
                        session.index = index
        await self.acl.assert_presence(
            self.name,
            {t: [s.index for ss in users.values() for s in ss] for t, users in by_tenant.items()},
        )
        # a user whose last connection here closed meanwhile may have been set again
        still = {(s.ident.tenant, s.ident.user) for s in self._held()}
        for tenant, users in by_tenant.items():
            for user, held in users.items():
                if (tenant, user) not in still:
                    await self.acl.presence(self.name, tenant, held[0].index, -1)
        return len(sessions)

    # -- reaping -----------------------------------------------------------------------

    async def _reap(self, beat: Beat) -> None:
        try:
            for victim in beat.expired:
                if victim != self.name and await self.leases.claim(victim, self.timings.lease_ms):
                    await self._release(victim)
        except (redis.RedisError, OSError) as exc:
            # lock and expired lease stay: the lock expires and a reaper tries again
            self._failed(exc)

    async def _release(self, victim: str) -> None:
        tenants = await self.acl.release(victim)
        await self.leases.finish(victim, self.asserted)
        self.reaped += 1
        self.metrics.reaped.inc()
        log.warning("released the presence of dead sidecar %s (%d tenant(s))", victim, tenants)

    # -- readiness and the team-message guard ------------------------------------------

    async def _check_ready(self, epoch: str) -> bool:
        state = await self.leases.readiness(epoch)
        members: Sequence[str] = [*self._members(), self.name]
        self.waiting = waiting_for(members, state, epoch, self.timings.lease_ms)
        if self.waiting:
            return False
        if self.settled != epoch or not self.complete:
            log.info("presence complete under epoch %s", epoch)
        self.settled, self.complete = epoch, True
        return True

    async def settle(self) -> bool:
        """Wait (bounded, shared by all waiting messages) until presence is complete."""
        if self._settling is None or self._settling.done():
            self._settling = asyncio.create_task(self._settle())
        return await asyncio.shield(self._settling)

    async def _settle(self) -> bool:
        deadline = time.monotonic() + self.timings.wait_s
        while True:
            try:
                beat = await self.sync()
                if await self._check_ready(beat.epoch):
                    return True
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
            if time.monotonic() >= deadline:
                log.warning(
                    "presence incomplete after %s s (waiting for %s): team messages proceed "
                    "and are counted in wsop_presence_incomplete_total",
                    self.timings.wait_s, sorted(self.waiting) or "Redis",
                )  # fmt: skip
                self.settled, self.complete = self.asserted, False
                return False
            await asyncio.sleep(SETTLE_POLL_S)

    async def team_recipients(
        self, tenant: str, teams: Sequence[str], sender_index: int | None
    ) -> tuple[list[UserId] | None, str | None]:
        """`LiveAcl.team_recipients`, guarded: a new (or missing) epoch in the reply waits
        for re-assertion and resolves again, instead of skipping users silently."""
        res = await self.acl.resolve_team(tenant, teams, sender_index)
        if res.epoch is None or res.epoch != self.settled:
            complete = await self.settle()
            res = await self.acl.resolve_team(tenant, teams, sender_index)
        else:
            complete = self.complete
        if not complete:
            self.metrics.incomplete.inc()
        return res.result()

    def health(self) -> dict[str, Any]:
        age = round(time.time() - self.last_beat, 3) if self.last_beat else None
        return {
            "epoch": self.asserted,
            "complete": self.complete and self.settled == self.asserted,
            "waiting_for": sorted(self.waiting),
            "last_heartbeat_age_s": age,
            "heartbeat_s": self.timings.heartbeat_s,
            "lease_s": self.timings.lease_s,
            "reap_bound_s": self.timings.reap_bound_s,
            "reaped": self.reaped,
            "reasserted": self.reasserted,
        }
