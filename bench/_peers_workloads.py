"""The workloads of bench/peers.py: who connects where, who sends to whom, and the ABBA
order every row runs in. bench/peers.py starts the systems and reports; the driver
(bench/_peers_driver.py) does the sending and the counting.

Every wsop system (the stack's LB, and any extra LB started with `--lb-args`) and the
Socket.IO cluster run the same phases. wsop systems share one Redis and one pair of
sidecars, so each uses its own tenants (`System.tag`): a user connected twice to the
same sidecars would receive every message twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from _common import proc_rss_bytes
from _peers_driver import Conn, Dialect, Driver, FrameMaker, Wsop, open_conns
from _stack_driver import close_clients

from wsop.acl.resolve import resolve
from wsop.acl.store import TenantStore

DIRECT, RELAY, TEAM_TENANT, IDLE = "peers-dm", "peers-relay", "peers-team", "peers-idle"
TEAM, TEAM_SIZE = "fan50", 50
WORKLOADS = ("idle", "direct", "relay", "team")
HAPROXY_RELAY = "haproxy relay"


@dataclass(frozen=True)
class Profile:
    """Sizes of one run: `quick` is a sanity run (< 1 min), `full` the figures."""

    name: str
    warmup_s: float
    seconds: float
    idle_conns: int
    direct_users: int = 64
    direct_window: int = 4
    team_senders: int = 10
    team_window: int = 2
    rate: float = 200.0
    rounds: int = 1
    """ABBA repeated: each system gets 2 × rounds phases a row."""
    prime_s: float = 2.0
    idle_settle_s: float = 1.5
    workloads: tuple[str, ...] = WORKLOADS
    py_spy_dir: str | None = None
    lb_args: tuple[str, ...] = ()
    """Extra LBs (`wsop lb … FLAGS`, one per entry) in front of the stack's sidecars,
    each a further wsop system in every row: how a new LB option (e.g. `--trunks 4`)
    joins the comparison in the same run."""


FULL = Profile("full", 0.5, 2.5, 5000, rounds=2)
QUICK = Profile("quick", 0.2, 0.6, 1000, prime_s=0.5, idle_settle_s=0.5)
"""(1,000 idle connections: with fewer, node's RSS moves by more than they take.)"""


@dataclass
class System:
    """One side of a comparison: how to reach it, in which dialect, which pids to charge."""

    name: str
    dialect: Dialect
    base: str
    pids: dict[str, int]
    servers: list[str]
    """The processes whose CPU is the system's (all of `pids` but the driver)."""
    owner: Any = None
    """wsop: (tenant, user) → sidecar; Socket.IO: None (the session id says where)."""
    tag: str = ""
    """Appended to every tenant name: keeps wsop systems on the same sidecars apart."""
    collectable: tuple[int, ...] = ()
    """Processes that collect their garbage on SIGUSR2 (node), before RSS readings."""

    def tenant(self, base: str) -> str:
        return f"{base}{self.tag}"


Side = tuple[System, Driver, list[Conn]]
"""A system, its driver (readers on every connection) and the connections that send."""
Status = Callable[[str], None]


@dataclass
class Results:
    """What the workloads measured: each row's phases by system, and each driver's ledger."""

    phases: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    ledgers: dict[str, dict[str, int]] = field(default_factory=dict)
    crossing: dict[str, float] = field(default_factory=dict)


def pair_across(conns: list[Conn], rng: random.Random) -> int:
    """Give every connection a recipient (a derangement: each user receives from exactly
    one other) with half the pairs across the two processes; returns that count.

    Constructive: k users of each side form one alternating cycle (2k crossing pairs),
    the rest cycle within their side; a lone leftover joins the alternating cycle next to
    a user of its own side (which adds no crossing). Needs two processes holding users.
    """
    sides: dict[str | None, list[Conn]] = {}
    for c in conns:
        sides.setdefault(c.node, []).append(c)
    if len(sides) != 2:
        raise RuntimeError(f"direct workload: users landed on {len(sides)} process(es), not 2")
    a, b = (rng.sample(side, len(side)) for side in sides.values())
    k = min(len(conns) // 4, len(a), len(b))
    cycle = [c for pair in zip(a[:k], b[:k], strict=True) for c in pair]
    cycles = [cycle]
    for rest in (a[k:], b[k:]):
        if len(rest) == 1 and cycle:
            cycle.insert(cycle.index(next(c for c in cycle if c.node == rest[0].node)) + 1, rest[0])
        elif rest:
            cycles.append(rest)
    for cyc in cycles:
        if len(cyc) == 1:
            raise RuntimeError("direct workload: a user would have to message itself")
        for i, c in enumerate(cyc):
            c.to = cyc[(i + 1) % len(cyc)].user
    node = {c.user: c.node for c in conns}
    return sum(c.node != node[c.to] for c in conns)


async def connect_users(
    system: System, tenant: str, users: list[int], teams: str = ""
) -> list[Conn]:
    conns = await open_conns(system.dialect, system.base, tenant, users, teams)
    if system.owner is not None:
        for c in conns:
            c.node = system.owner((tenant, c.user))
    return conns


def frame_maker(dialect: Dialect, frame: str) -> FrameMaker:
    if frame == "direct":
        return lambda c, mid, seq, now: dialect.direct(c.to, mid, seq, now)
    return lambda c, mid, seq, now: dialect.team(TEAM, mid, seq, now)


def abba_order(sides: tuple[Any, ...], rounds: int) -> list[Any]:
    """A B … B A (A B C C B A for three), `rounds` times over: each system's phases sit
    symmetrically around the row's middle, so a drift — or the bursts of whoever else
    shares the machine — weighs on every system alike."""
    return [*sides, *reversed(sides)] * rounds


async def abba(
    p: Profile, sides: tuple[Side, ...], frame: str, *, window: int | None,
    rate: float | None, label: str,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """The same phase on every side in ABBA order. Returns each system's phases."""
    out: dict[str, list[dict[str, Any]]] = {side[0].name: [] for side in sides}
    for i, (system, driver, senders) in enumerate(abba_order(sides, p.rounds)):
        spy = None
        if p.py_spy_dir and system.dialect is Wsop and rate is None:
            tag = f"{label}-{system.name}-{i}".replace(" ", "_")
            spy = (p.py_spy_dir, tag)
        result = await driver.phase(
            senders, frame_maker(system.dialect, frame), window=window, rate=rate,
            warmup_s=p.warmup_s, seconds=p.seconds, pids=system.pids, spy=spy,
        )  # fmt: skip
        out[system.name].append(result)
    return out


async def prime(p: Profile, sides: list[Side], frame: str, window: int) -> None:
    """Unmeasured max-rate traffic on every side before its first measured phase: V8
    compiles Socket.IO's hot paths in the first seconds of load, and that one-off CPU
    belongs to no row (CPython has no JIT: wsop gets the same treatment regardless)."""
    for system, driver, senders in sides:
        await driver.phase(
            senders, frame_maker(system.dialect, frame), window=window, rate=None,
            warmup_s=0.0, seconds=p.prime_s, pids={},
        )  # fmt: skip


async def wait_team_online(r: redis.Redis, tenant: str, timeout: float = 30.0) -> None:
    """Until wsop's presence has all 50 members online (set as each sidecar accepts)."""
    store, deadline = TenantStore(r), time.monotonic() + timeout
    while resolve(store, tenant, [TEAM]).count < TEAM_SIZE:
        if time.monotonic() > deadline:
            raise RuntimeError(f"wsop: the {TEAM_SIZE} team members never all came online")
        await asyncio.sleep(0.05)


async def settled_rss(
    pids: dict[str, int], collectable: tuple[int, ...] = (), timeout_s: float = 10.0
) -> dict[str, int]:
    """Each process's RSS after a full garbage collection where one can be asked for
    (`collectable`), once it holds still (two readings 0.25 s apart within 1%): V8
    handing back its start-up heap mid-row (it did on a busy machine: -120 KB "per
    connection") would otherwise make the connections look like they freed memory."""
    for pid in collectable:
        os.kill(pid, signal.SIGUSR2)
    last = {k: proc_rss_bytes(pid) for k, pid in pids.items()}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = {k: proc_rss_bytes(pid) for k, pid in pids.items()}
        if all(abs(now[k] - last[k]) <= 0.01 * last[k] for k in pids):
            return now
        last = now
    return last


async def idle_memory(p: Profile, system: System) -> dict[str, Any]:
    """RSS of every server process before and after `n` idle connections, per connection.

    A warm-up batch is opened and closed first, so one-off allocations (first handshake,
    imports, pools) sit in the baseline rather than in the per-connection figure.
    """
    n, tenant = p.idle_conns, system.tenant(IDLE)
    users = list(range(n))
    await close_clients(await connect_users(system, tenant, users[:100]))
    await asyncio.sleep(p.idle_settle_s)
    pids = {k: pid for k, pid in system.pids.items() if k in system.servers}
    before = await settled_rss(pids, system.collectable)
    started = time.perf_counter()
    conns = await connect_users(system, tenant, users)
    open_s = time.perf_counter() - started
    await asyncio.sleep(p.idle_settle_s)
    after = await settled_rss(pids, system.collectable)
    await close_clients(conns)
    return {
        "connections": n,
        "open_seconds": round(open_s, 2),
        "bytes_per_conn": {k: (after[k] - before[k]) / n for k in before},
        "total_bytes_per_conn": sum(after[k] - before[k] for k in before) / n,
    }


async def direct_rows(
    p: Profile, compared: tuple[System, ...], relay: System, out: Results, status: Status
) -> None:
    """Direct messages, 64 users a system (half the pairs across processes): the max and
    fixed-rate rows (every system of `compared`: wsop first, its extra LBs, Socket.IO)
    and the relay row (wsop's LBs against HAProxy relaying to the same sidecars)."""
    users = list(range(p.direct_users))
    balancers = [s for s in compared if s.dialect is Wsop]
    systems = list(compared if "direct" in p.workloads else balancers)
    if "relay" in p.workloads:
        systems.append(relay)
    sides: dict[str, Side] = {}
    for system in systems:
        tenant = RELAY if system is relay else system.tenant(DIRECT)
        conns = await connect_users(system, tenant, users)
        out.crossing[system.name] = pair_across(conns, random.Random(7)) / len(conns)
        sides[system.name] = (system, Driver(system.dialect, conns, 1), conns)
    await prime(p, list(sides.values()), "direct", p.direct_window)
    runs = []
    if "direct" in p.workloads:
        every = tuple(sides[s.name] for s in compared)
        runs += [
            ("direct max", every, p.direct_window, None),
            ("direct fixed", every, None, p.rate),
        ]
    if "relay" in p.workloads:
        lbs = tuple(sides[s.name] for s in (*balancers, relay))
        runs.append(("relay", lbs, p.direct_window, None))
    for label, row_sides, window, rate in runs:
        status(f"{label} (ABBA)…")
        out.phases[label] = await abba(p, row_sides, "direct", window=window, rate=rate,
                                       label=label)  # fmt: skip
    for name, (_, driver, _) in sides.items():
        out.ledgers[f"direct {name}"] = driver.ledger()
        await driver.close()


async def team_rows(
    p: Profile, compared: tuple[System, ...], r: redis.Redis, out: Results, status: Status
) -> None:
    """Team 1→50: all 50 members online on each system, `team_senders` of them sending.
    The team must already be seeded in `r` for every wsop system's tenant."""
    sides = []
    for system in compared:
        tenant = system.tenant(TEAM_TENANT)
        conns = await connect_users(system, tenant, list(range(TEAM_SIZE)), TEAM)
        if system.dialect is Wsop:
            await wait_team_online(r, tenant)
        sides.append((system, Driver(system.dialect, conns, TEAM_SIZE), conns[: p.team_senders]))
    await prime(p, sides, "team", p.team_window)
    for label, window, rate in (("team max", p.team_window, None), ("team fixed", None, p.rate)):
        status(f"{label} (ABBA)…")
        out.phases[label] = await abba(p, tuple(sides), "team", window=window, rate=rate,
                                       label=label)  # fmt: skip
    for system, driver, _ in sides:
        out.ledgers[f"team {system.name}"] = driver.ledger()
        await driver.close()
