"""All of one worker's connections in one loop: paced sends, bulk reads, the ledger.

The old generator ran a locust User per connection: a greenlet, a pacing timer and a
blocking read per user, a locust event per delivery. Past ~5K msg/s per process the
hub's switching ate the CPU and the achieved rate *collapsed* (offered 9K, achieved
4.4K). Here one loop owns every connection of the worker:

- the sockets are plain non-blocking ones in one `epoll`; the loop wakes when any is
  readable (or a send is due), reads every ready socket once (`recv` of up to 64 KiB,
  parsed by `FrameReader`) and then sends what came due (`Pacer`: one schedule at the
  worker's total rate, handed round-robin to the connections);
- frames are masked with a fresh random key each (one `os.urandom` per batch of sends,
  websockets' C `apply_mask`); a direct message is built, booked and sent inline in the
  pacing loop (`_send_due`), the hot path of the send side;
- latencies go to a per-interval histogram (`LatencyBook`), handed to locust once a
  second, not as one event per delivery;
- past saturation the loop batches more per wake-up and the pacer drops a backlog of
  more than 1 s (`behind`), so the achieved rate stays at the generator's capacity and
  the summary can say the generator, not the stack, was the limit.

The accounting is the old one, unchanged: `Ledger` books every message before it
leaves, ticks off every arrival, classifies every loss; a dropped connection
reconnects with backoff (`reconnect_delay`) and says hello to itself before it sends;
it asks `?since=` the last offset it received, and the replay before `recovered` is
booked as deliveries (`wsop.load.replay`, docs/loadtest.md "Recovery").

The direct-message loop of `_send_due` and the fast frames of `Wire._read` have a
compiled twin (`wsop.load.hot`, `wsop/load/_hot.c`): `self.hot`, None without it.

I/O-world neutral: the gevent glue (handshakes in greenlets, waiting in the hub, locust
events) is injected as `Hooks` (`wsop.load.user`); tests drive a `Pool` with plain
blocking hooks. Never imports the asyncio servers (of `websockets`, only its C
`speedups` helper, through `wsop.load.frames`).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import time
from typing import Any

from gevent.monkey import get_original

from wsop.load.chaos import reconnect_delay
from wsop.load.frames import TEXT_HEADS, FrameReader, Masker, apply_mask
from wsop.load.hot import compiled
from wsop.load.latency import LatencyBook
from wsop.load.layout import slot_identity, team_membership, worker_tenants
from wsop.load.ledger import Ledger
from wsop.load.pacer import Pacer
from wsop.load.procstat import cpu_seconds
from wsop.load.profiles import LoadPlan
from wsop.load.wire import (
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    OUT_CAP,
    WOULD_BLOCK,
    Conn,
    Hooks,
    Wire,
    share,
)  # fmt: skip

__all__ = ["Conn", "Hooks", "Pool", "share"]

_epoll = get_original("select", "epoll")  # gevent's monkey-patching removes select.epoll
MIN_TICK_S = 0.001  # a busy loop wakes at most this often: reads and sends in batches
BATCH_S = 0.005  # sends per wake-up at most this much of the schedule, then reads again
HOUSEKEEPING_S = 0.2
SETTLE_EVERY_S = 1.0
HELLO_TIMEOUT_S = 10.0  # connected but no round trip to self by then: reconnect
HELLO_RETRY_S = 1.0  # a hello can be lost (e.g. presence not yet written): say it again
HELLO = '{"type":"direct","to":%d,"data":"hello","id":"hello"}'
# data: [worker, sender slot, seq, sent at µs]: what a delivery needs to find its entry
_DIRECT = b'{"type":"direct","to":%d,"data":[%d,%d,%d,%d],"id":"%d"}'
_random, _time_ns, _urandom = random.random, time.time_ns, os.urandom


class Pool(Wire):
    """Every connection of one worker process, driven by `run` (see the module doc)."""

    def __init__(self, plan: LoadPlan, index: int, hooks: Hooks) -> None:
        self.plan, self.index, self.hooks = plan, index, hooks
        self._index_b = str(index).encode()
        edges = tuple(f["at_s"] for f in plan.extra.get("chaos", ()))
        self.ledger = Ledger(plan.grace_s, plan.tenants_per_worker, edges, index)
        self.tenants = worker_tenants(plan, index)
        self.teams = team_membership(plan, self.tenants)
        # Users meant to be online: joined after a round trip proved them routable, never
        # left while the run lasts. A disconnect does not remove anyone, so messages to a
        # user the stack dropped count as lost, not as "not expected".
        self.members: dict[str, set[int]] = {t: set() for t in self.tenants}
        self.member_list: dict[str, list[int]] = {t: [] for t in self.tenants}
        self.conns: list[Conn] = []
        for slot in range(share(plan.connections, plan.workers, index)):
            tenant, user = slot_identity(plan, index, slot)
            conn = Conn(slot, tenant, user, plan.tenants_per_worker)
            conn.my_teams = self.teams[tenant].teams_of.get(user, ())
            conn.members = self.teams[tenant].members
            self.conns.append(conn)
        self.order = [c.slot for c in self.conns]
        random.Random(index).shuffle(self.order)  # tenants and users interleaved
        self.cursor = 0
        self.by_fd: dict[int, Conn] = {}
        self.ep = _epoll()
        self.masker = Masker()
        self.pacer = Pacer()
        self.latency = LatencyBook()
        self.per_user_rate = 0.0
        self.stopping = self.running = False
        self._retries: list[tuple[float, int]] = []  # (when, slot) reconnects
        self._next_spawn, self._spawn_at = 0, 0.0
        self._spawn_every = plan.workers / max(plan.spawn_rate, 1e-9)
        self._greeting: set[Conn] = set()  # connected, hello not answered yet
        self._spawned = 0
        self._told_spawned = -1
        self._house_at = self._settle_at = 0.0
        self.away = self.blocked = 0  # sends skipped: user reconnecting, stack not reading
        self._cpu0: float | None = None
        self._wall0 = self._wall1 = self._cpu1 = 0.0
        self.idle_s = 0.0
        self._now_us = 0
        self.hot = compiled()  # the C twin of the hot loops (`wsop.load.hot`), or None

    # -- membership --------------------------------------------------------------------

    def join(self, conn: Conn) -> None:
        if conn.user not in self.members[conn.tenant]:
            self.members[conn.tenant].add(conn.user)
            self.member_list[conn.tenant].append(conn.user)
            self.ledger.counters.ready += 1

    # -- the rate and the run phase's CPU -----------------------------------------------

    def set_rate(self, per_user_rate: float, now: float | None = None) -> None:
        """The master's per-user rate; the first non-zero one starts the CPU clock, the
        zero after it stops it (the run phase, which the summary charges)."""
        now = time.monotonic() if now is None else now
        self.per_user_rate = per_user_rate
        rate = per_user_rate * len(self.conns)
        if rate > 0 and self._cpu0 is None:
            self._cpu0, self._wall0, self.idle_s = cpu_seconds(), now, 0.0
        elif rate <= 0 and self._cpu0 is not None and not self._wall1:
            self._cpu1, self._wall1 = cpu_seconds(), now
        self.pacer.set_rate(rate, now)

    def generator(self) -> dict[str, Any]:
        """This worker's own cost over the run phase (so far, while it runs)."""
        cpu = wall = 0.0
        if self._cpu0 is not None:
            end = self._wall1 or time.monotonic()
            cpu = (self._cpu1 if self._wall1 else cpu_seconds()) - self._cpu0
            wall = end - self._wall0
        return {
            "worker": self.index,
            "connections": len(self.conns),
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "idle_s": round(min(self.idle_s, wall), 3),
            "scheduled": self.pacer.scheduled,
            "behind": self.pacer.behind,
            "away": self.away,
            "blocked": self.blocked,
        }

    def snapshot(self) -> dict[str, Any]:
        return {**self.ledger.snapshot(), "generator": self.generator()}

    def finish(self) -> dict[str, Any]:
        """Stop the clock: settle every message (the drain stage was the grace period)."""
        if self._cpu0 is not None and not self._wall1:
            self.set_rate(0.0)
        self.ledger.settle(time.time(), everything=True)
        self.hooks.flush(self.latency)
        return self.snapshot()

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Drive every connection until `stop`."""
        self.running = True
        self._spawn_at = time.monotonic()
        try:
            while not self.stopping:
                now = time.monotonic()
                behind = self.step(now)
                if behind:
                    self.hooks.sleep(0)  # let the hub breathe; no waiting
                    continue
                now2 = time.monotonic()
                gap = min(self.pacer.wait_s(now2), self._house_at - now2, self._next_connect(now2))
                # a tick starts MIN_TICK_S after the last one started (measured from the
                # end of the last pause instead, a quick tick followed every slow one:
                # ~1.5 ticks a millisecond, each a sleep, two epoll_waits and the loop)
                pause = now + MIN_TICK_S - now2
                counting = self._cpu0 is not None and not self._wall1
                if pause > 0:
                    self.hooks.sleep(pause)
                    gap -= pause
                if gap > 0:
                    self.hooks.wait(gap)
                if counting:
                    self.idle_s += time.monotonic() - now2
        finally:
            self.running = False

    def step(self, now: float) -> bool:
        """One turn: read what is ready, connect what is due, send what is due.
        True when sends are still due (the generator is behind)."""
        if self.hot is not None:
            self.hot.step_io(self)  # `_ready_io`, compiled
        else:
            self._ready_io()
        self._connects(now)
        behind = self._send_due(time.monotonic())
        if now >= self._house_at:
            self._housekeeping(now)
        return behind

    def _ready_io(self) -> None:
        """Flush and read every ready socket (their Python loop; see `self.hot`)."""
        events = self.ep.poll(0)
        if events:
            self._now_us = time.time_ns() // 1000
            by_fd = self.by_fd
            for fd, ev in events:
                conn = by_fd.get(fd)
                if conn is None:
                    continue
                if ev & EPOLLOUT:
                    self._flush(conn)
                if ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
                    self._read(conn)

    def stop(self) -> None:
        self.stopping = True
        for conn in self.conns:
            if conn.sock is not None:
                self._close(conn)

    # -- connecting --------------------------------------------------------------------

    def _next_connect(self, now: float) -> float:
        gap = self._retries[0][0] - now if self._retries else 1.0
        if self._next_spawn < len(self.conns):
            gap = min(gap, self._spawn_at - now)
        return gap

    def _connects(self, now: float) -> None:
        conns = self.conns
        while self._next_spawn < len(conns) and self._spawn_at <= now:
            conn = conns[self._next_spawn]
            self._next_spawn += 1
            self._spawn_at += self._spawn_every
            conn.first_try = now
            self._start(conn)
        while self._retries and self._retries[0][0] <= now:
            _, slot = heapq.heappop(self._retries)
            self._start(conns[slot])

    def _start(self, conn: Conn) -> None:
        if self.stopping or conn.sock is not None or conn.connecting:
            return
        conn.connecting = True
        conn.since = conn.offset  # the URL asks for what came after it (`Hooks.connect`)
        self.hooks.connect(self, conn)

    def _retry(self, conn: Conn) -> None:
        if not self.stopping:
            at = time.monotonic() + reconnect_delay(conn.attempt)
            heapq.heappush(self._retries, (at, conn.slot))

    def connect_failed(self, conn: Conn, reason: str, ms: float = 0.0) -> None:
        """The handshake failed (`reason`: `wsop.load.failures.stable_reason`)."""
        conn.connecting = False
        self.ledger.connect_failed(reason)
        self.hooks.fail("connect", reason, ms)
        conn.attempt += 1
        self._retry(conn)

    def attach(self, conn: Conn, sock: Any, tls: bool = False, ms: float = 0.0) -> None:
        """`sock` (non-blocking, handshake done) is `conn`'s now: say hello through it."""
        conn.connecting = False
        if self.stopping:
            sock.close()
            return
        conn.sock, conn.fd, conn.tls = sock, sock.fileno(), tls
        conn.reader, conn.out = FrameReader(), None
        conn.replaying = conn.since is not None  # until its `recovered` frame
        self.by_fd[conn.fd] = conn
        self.ep.register(conn.fd, EPOLLIN)
        self.hooks.event("connect", ms)
        now = time.monotonic()
        conn.hello_deadline = now + HELLO_TIMEOUT_S
        conn.hello_next = now + HELLO_RETRY_S
        self._greeting.add(conn)
        self._write(conn, self.masker.frame((HELLO % conn.user).encode()))

    def _hello_answered(self, conn: Conn) -> None:
        if conn.ready:
            return
        self.ledger.back(conn.slot, time.time())
        if not conn.joined:
            self.join(conn)
            conn.joined = True
        conn.ready = True
        self._greeting.discard(conn)
        if not conn.spawned:
            conn.spawned = True
            self._spawned += 1

    def _close(self, conn: Conn) -> None:
        self.by_fd.pop(conn.fd, None)
        with contextlib.suppress(OSError, ValueError):  # closed under us already
            self.ep.unregister(conn.fd)
        with contextlib.suppress(OSError):
            conn.sock.close()
        conn.sock, conn.fd, conn.out = None, -1, None

    def _drop(self, conn: Conn, reason: str = "connection closed by the stack") -> None:
        """The connection ended: away until a reconnect and a hello bring it back."""
        if conn.sock is None:
            return
        self._close(conn)
        self._greeting.discard(conn)
        if self.stopping:
            return
        conn.attempt = 0 if conn.ready else conn.attempt + 1
        conn.ready = False
        self.ledger.dropped(conn.slot, time.time())
        self.hooks.fail("disconnect", reason)
        self._retry(conn)

    def _housekeeping(self, now: float) -> None:
        self._house_at = now + HOUSEKEEPING_S
        for conn in list(self._greeting):
            if now > conn.hello_deadline:
                self.hooks.fail("hello", "no round trip to self within 10 s; reconnecting")
                self._drop(conn, "no hello within 10 s")
            elif now >= conn.hello_next:
                conn.hello_next = now + HELLO_RETRY_S
                self._write(conn, self.masker.frame((HELLO % conn.user).encode()))
        for conn in self.conns[: self._next_spawn] if self._spawned < len(self.conns) else ():
            if not conn.spawned and conn.first_try and now - conn.first_try >= HELLO_TIMEOUT_S:
                conn.spawned = True  # gave its first try its time: the connect phase goes on
                self._spawned += 1
        if self._spawned != self._told_spawned:
            self._told_spawned = self._spawned
            self.hooks.spawned(self._spawned, len(self.conns))
        if now >= self._settle_at:
            self._settle_at = now + SETTLE_EVERY_S
            self.ledger.settle(time.time())
            self.hooks.flush(self.latency)

    # -- sending -----------------------------------------------------------------------

    def _send_due(self, now: float) -> bool:
        """Send what came due (direct messages inline: this is the send path's hot loop)."""
        due = self.pacer.due(now)
        if not due:
            return False
        n = min(due, max(16, int(self.pacer.rate * BATCH_S)))
        if self.hot is not None:
            self.hot.send_direct(self, n)  # the loop below, compiled
            self.pacer.take(n)
            return due > n
        conns, order, cursor, k = self.conns, self.order, self.cursor, len(self.order)
        ledger, frame, write = self.ledger, self.masker.frame, self._write
        members = self.member_list
        index, tw, share = self.index, self.plan.tenants_per_worker, self.plan.team_share
        keys, i = _urandom(4 * n), 0  # a fresh random mask per frame, drawn for the batch
        for _ in range(n):
            conn = conns[order[cursor]]
            cursor += 1
            if cursor == k:
                cursor = 0
            if not conn.ready:
                self.away += 1
                continue
            if conn.out is not None and len(conn.out) > OUT_CAP:
                self.blocked += 1
                continue
            if conn.my_teams and _random() < share:
                self._send_team(conn)
                continue
            seq = conn.seq
            conn.seq = seq + 1
            ts = _time_ns() // 1000
            pool = members[conn.tenant]
            m = len(pool)
            user = pool[int(_random() * m)]
            if user == conn.user and m > 1:
                user = pool[int(_random() * m)]
            key = conn.key_base | seq
            ledger.sent(key, (user * tw + conn.tenant_index,), ts / 1e6)  # before it can arrive
            text = _DIRECT % (user, index, conn.slot, seq, ts, seq)
            if conn.out is not None or len(text) > 125:
                if not write(conn, frame(text)):
                    ledger.cancel(key)
                continue
            mask = keys[i * 4 : i * 4 + 4]  # Masker.frame and _write, inline
            i += 1
            data = TEXT_HEADS[len(text)] + mask + apply_mask(text, mask)
            try:
                sent = conn.sock.send(data)
            except WOULD_BLOCK:
                sent = 0
            except OSError:
                ledger.cancel(key)
                self._drop(conn, "send failed")
                continue
            if sent < len(data):
                conn.out = bytearray(data[sent:])
                self.ep.modify(conn.fd, EPOLLIN | EPOLLOUT)
        self.cursor = cursor
        self.pacer.take(n)
        return due > n
