"""wsop against Socket.IO 4 + HAProxy: the same clients, workloads and machine, one run.

Both systems pay for a balancer, two server processes and one Redis:

- wsop: a private `wsop up --insecure --sidecars 2` stack (LB + 2 sidecars) on its own
  redis-server;
- Socket.IO 4 with the official `@socket.io/redis-adapter` (bench/peers/server.js, two
  node processes, npm packages in bench/peers/) on another redis-server, behind HAProxy
  (`balance url_param user`, `hash-type consistent`, `nbthread 1`, HTTP mode).

One asyncio driver (bench/_peers_driver.py) speaks both protocols with the same code.
Workloads: direct (64 users each sending to another, half the pairs across the two
processes) and team 1→50 (one 50-member team, every message to all 50, the sender
included), each at a fixed rate and at max rate (a window of messages in flight per
sender), in ABBA order (wsop, Socket.IO, Socket.IO, wsop); idle connections for memory;
and HAProxy alone in front of wsop's own sidecars (each user routed to its ring owner)
against wsop's LB, for the price of the LB as a relay. Server CPU is every server
process's run time from /proc (the driver's own CPU is reported, never counted).

Every message must be acked and every delivery must arrive: anything lost (or an error,
or a broken connection) fails the run with exit status 1 after the report.

    .venv/bin/python bench/peers.py             # ~3 min on 2 cores
    .venv/bin/python bench/peers.py --quick     # < 1 min sanity run
    .venv/bin/python bench/peers.py --json      # one JSON document on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
from _common import machine_note, private_redis, proc_rss_bytes, raise_fd_limit
from _peers_driver import Conn, Dialect, Driver, FrameMaker, SocketIO, Wsop, close_conns, open_conns
from _peers_report import GOALS, print_report, ratios, row_summary
from _peers_servers import (
    Missing,
    ensure_node_modules,
    haproxy,
    socketio_nodes,
    tool_versions,
    workdir,
)
from stack import private_stack, seed_team

from wsop.acl.resolve import resolve
from wsop.acl.store import TenantStore
from wsop.ring import build

COMMAND = ".venv/bin/python bench/peers.py"
DIRECT, RELAY, TEAM_TENANT, IDLE = "peers-dm", "peers-relay", "peers-team", "peers-idle"
TEAM, TEAM_SIZE = "fan50", 50
WORKLOADS = ("idle", "direct", "relay", "team")


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


FULL = Profile("full", 0.5, 2.5, 5000, rounds=2)
QUICK = Profile("quick", 0.2, 0.6, 300, prime_s=0.5, idle_settle_s=0.5)


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


# --- workloads ------------------------------------------------------------------------


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
    return sum(c.node != _node_of(conns, c.to) for c in conns)


def _node_of(conns: list[Conn], user: int) -> str | None:
    return next(c.node for c in conns if c.user == user)


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


Side = tuple[System, Driver, list[Conn]]
"""A system, its driver (readers on every connection) and the connections that send."""


async def abba(
    p: Profile, pair: tuple[Side, Side], frame: str, *, window: int | None,
    rate: float | None, label: str,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """The same phase on A, B, B, A, `p.rounds` times over: drift, and the bursts of
    whoever else shares the machine, hit both systems alike. Returns each system's phases."""
    out: dict[str, list[dict[str, Any]]] = {pair[0][0].name: [], pair[1][0].name: []}
    order = (pair[0], pair[1], pair[1], pair[0]) * p.rounds
    for i, (system, driver, senders) in enumerate(order):
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


async def wait_team_online(r: redis.Redis, timeout: float = 30.0) -> None:
    """Until wsop's presence has all 50 members online (set as each sidecar accepts)."""
    store, deadline = TenantStore(r), time.monotonic() + timeout
    while resolve(store, TEAM_TENANT, [TEAM]).count < TEAM_SIZE:
        if time.monotonic() > deadline:
            raise RuntimeError(f"wsop: the {TEAM_SIZE} team members never all came online")
        await asyncio.sleep(0.05)


async def idle_memory(p: Profile, system: System) -> dict[str, Any]:
    """RSS of every server process before and after `n` idle connections, per connection.

    A warm-up batch is opened and closed first, so one-off allocations (first handshake,
    imports, pools) sit in the baseline rather than in the per-connection figure.
    """
    n = p.idle_conns
    users = list(range(n))
    await close_conns(await connect_users(system, IDLE, users[:100]))
    await asyncio.sleep(p.idle_settle_s)
    before = {k: proc_rss_bytes(pid) for k, pid in system.pids.items() if k in system.servers}
    started = time.perf_counter()
    conns = await connect_users(system, IDLE, users)
    open_s = time.perf_counter() - started
    await asyncio.sleep(p.idle_settle_s)
    after = {k: proc_rss_bytes(system.pids[k]) for k in before}
    await close_conns(conns)
    return {
        "connections": n,
        "open_seconds": round(open_s, 2),
        "bytes_per_conn": {k: (after[k] - before[k]) / n for k in before},
        "total_bytes_per_conn": sum(after[k] - before[k] for k in before) / n,
    }


@dataclass
class Results:
    """What the workloads measured: each row's phases by system, and each driver's ledger."""

    phases: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    ledgers: dict[str, dict[str, int]] = field(default_factory=dict)
    crossing: dict[str, float] = field(default_factory=dict)


Status = Callable[[str], None]


async def direct_rows(
    p: Profile, systems: tuple[System, ...], out: Results, status: Status
) -> None:
    """Direct messages, 64 users a system (half the pairs across processes): the max and
    fixed-rate rows (wsop vs Socket.IO) and the relay row (wsop's LB vs HAProxy)."""
    users = list(range(p.direct_users))
    drivers = {}
    for system, tenant in zip(systems, (DIRECT, DIRECT, RELAY), strict=True):
        wanted = "relay" if system.name == "haproxy relay" else "direct"
        if wanted not in p.workloads and system.name != "wsop":
            continue
        conns = await connect_users(system, tenant, users)
        out.crossing[system.name] = pair_across(conns, random.Random(7)) / len(conns)
        drivers[system.name] = (system, Driver(system.dialect, conns, 1), conns)
    await prime(p, list(drivers.values()), "direct", p.direct_window)
    runs = []
    if "direct" in p.workloads:
        pair = (drivers["wsop"], drivers["socket.io"])
        runs += [("direct max", pair, p.direct_window, None), ("direct fixed", pair, None, p.rate)]
    if "relay" in p.workloads:
        runs.append(("relay", (drivers["wsop"], drivers["haproxy relay"]), p.direct_window, None))
    for label, pair, window, rate in runs:
        status(f"{label} (ABBA)…")
        out.phases[label] = await abba(p, pair, "direct", window=window, rate=rate, label=label)
    for name, (_, driver, _) in drivers.items():
        out.ledgers[f"direct {name}"] = driver.ledger()
        await driver.close()


async def team_rows(
    p: Profile, systems: tuple[System, ...], r: redis.Redis, out: Results, status: Status
) -> None:
    """Team 1→50: all 50 members online on each system, `team_senders` of them sending."""
    team = {}
    for system in systems:
        conns = await connect_users(system, TEAM_TENANT, list(range(TEAM_SIZE)), TEAM)
        team[system.name] = (system, Driver(system.dialect, conns, TEAM_SIZE),
                             conns[: p.team_senders])  # fmt: skip
    await wait_team_online(r)
    await prime(p, list(team.values()), "team", p.team_window)
    pair = (team["wsop"], team["socket.io"])
    for label, window, rate in (("team max", p.team_window, None), ("team fixed", None, p.rate)):
        status(f"{label} (ABBA)…")
        out.phases[label] = await abba(p, pair, "team", window=window, rate=rate, label=label)
    for name, (_, driver, _) in team.items():
        out.ledgers[f"team {name}"] = driver.ledger()
        await driver.close()


# --- the run --------------------------------------------------------------------------


async def run(p: Profile, status: Status) -> dict[str, Any]:
    """Start both systems and both HAProxies, run the chosen workloads, stop everything.

    SIGTERM cancels this task (as Ctrl-C does): the cancellation arrives at an `await`, so
    every `with` below unwinds in order and nothing this run started survives it.
    """
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    me = os.getpid()
    with contextlib.ExitStack() as stack:
        wd = stack.enter_context(workdir())
        rw, info_w = stack.enter_context(private_redis())
        rs, info_s = stack.enter_context(private_redis())
        status("starting wsop (LB + 2 sidecars), Socket.IO (2 nodes) and two HAProxies…")
        ws = stack.enter_context(private_stack(2, f"redis://127.0.0.1:{info_w.port}/0"))
        nodes = stack.enter_context(socketio_nodes(f"redis://127.0.0.1:{info_s.port}/0", wd))
        maxconn = p.idle_conns + 1000
        hap = stack.enter_context(haproxy("haproxy", {n.name: n.port for n in nodes}, wd, maxconn))
        placement = build(ws.algo, sorted(ws.sidecar_pids))
        sidecar_ports = {}
        for doc in json.loads((ws.state / "stack.json").read_text())["sidecars"]:
            sidecar_ports[doc["name"]] = int(doc["url"].rsplit(":", 1)[1])
        owners = {u: placement.owner((RELAY, u)) for u in range(p.direct_users)}
        relay = stack.enter_context(haproxy("relay", sidecar_ports, wd, maxconn, owners))
        redis_w = int(rw.info("server")["process_id"])
        redis_s = int(rs.info("server")["process_id"])
        wsop = System("wsop", Wsop, ws.lb_url, {**ws.pids, "redis": redis_w, "driver": me},
                      [*ws.pids, "redis"], placement.owner)  # fmt: skip
        sio_pids = {"haproxy": hap.pid, **{n.name: n.pid for n in nodes}, "redis": redis_s}
        sio = System("socket.io", SocketIO, hap.url, {**sio_pids, "driver": me}, list(sio_pids))
        relay_pids = {"haproxy": relay.pid, **ws.sidecar_pids, "redis": redis_w}
        hap_relay = System("haproxy relay", Wsop, relay.url, {**relay_pids, "driver": me},
                           list(relay_pids), placement.owner)  # fmt: skip

        idle = {}
        if "idle" in p.workloads:
            for system in (wsop, sio):
                status(f"{p.idle_conns:,} idle connections to {system.name}…")
                idle[system.name] = await idle_memory(p, system)
        out = Results()
        if "direct" in p.workloads or "relay" in p.workloads:
            await direct_rows(p, (wsop, sio, hap_relay), out, status)
        if "team" in p.workloads:
            seed_team(rw, TEAM_TENANT, TEAM, range(TEAM_SIZE))
            await team_rows(p, (wsop, sio), rw, out, status)

        systems = {s.name: s for s in (wsop, sio, hap_relay)}
        rows = [
            row_summary(label, name, runs, systems[name].servers, p, out.crossing.get(name))
            for label, by_system in out.phases.items()
            for name, runs in by_system.items()
        ]
        return {
            "rows": rows,
            "idle": idle,
            "ledgers": out.ledgers,
            "redis": {"wsop": info_w.version, "socket.io": info_s.version},
        }


def lost_anything(ledgers: dict[str, dict[str, int]]) -> list[str]:
    """The ledgers that are not clean: something lost, unacked, refused or broken."""
    bad = []
    for name, led in ledgers.items():
        faults = {
            k: led[k]
            for k in (
                "lost",
                "unacked",
                "errors",
                "ack_count_mismatch",
                "unexpected",
                "broken_connections",
            )  # fmt: skip
            if led[k]
        }
        if faults or led["delivered"] != led["expected_deliveries"]:
            bad.append(f"{name}: {faults or led}")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a sanity run < 1 min")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--check-goals",
        action="store_true",
        help="exit 1 when a goal of issue 17 is missed (not only on loss)",
    )
    for flag, kind, what in (
        ("--seconds", float, "timed window of each phase"),
        ("--rounds", int, "how many times each row's ABBA order runs"),
        ("--rate", float, "the fixed rate, messages/s"),
        ("--idle-conns", int, "connections held open for the memory figure"),
        ("--py-spy-dir", str, "record py-spy profiles of wsop's processes at max rate here"),
        ("--workloads", str, f"comma-separated subset of {','.join(WORKLOADS)}"),
    ):
        parser.add_argument(flag, type=kind, help=f"{what} (overrides the profile)")
    args = parser.parse_args()
    p = QUICK if args.quick else FULL
    if args.workloads is not None:
        chosen = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
        unknown = sorted(set(chosen) - set(WORKLOADS))
        if unknown or not chosen:
            parser.error(f"--workloads: choose from {','.join(WORKLOADS)} (got {args.workloads!r})")
        args.workloads = chosen
    overrides = {
        "seconds": args.seconds, "rate": args.rate, "idle_conns": args.idle_conns,
        "py_spy_dir": args.py_spy_dir, "workloads": args.workloads, "rounds": args.rounds,
    }  # fmt: skip
    p = replace(p, **{k: v for k, v in overrides.items() if v is not None})
    try:
        versions = tool_versions()
        if ensure_node_modules():
            print(f"installed the npm packages into {Path(__file__).parent / 'peers'}",
                  file=sys.stderr)  # fmt: skip
    except Missing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if p.py_spy_dir:
        Path(p.py_spy_dir).mkdir(parents=True, exist_ok=True)
    import uvloop
    from rich.console import Console

    fd_limit = raise_fd_limit()[0]
    err = Console(stderr=True)
    started = time.perf_counter()
    try:
        result = uvloop.run(
            run(p, lambda msg: err.print(f"[{time.perf_counter() - started:5.1f} s] {msg}"))
        )
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every process this run started has been stopped", file=sys.stderr)
        return 130
    checks = ratios(result["rows"], result["idle"])
    bad = lost_anything(result["ledgers"])
    doc = {
        "command": " ".join([COMMAND, *sys.argv[1:]]),
        "profile": p.name,
        "machine": machine_note(),
        "versions": {**versions, "redis": result["redis"]},
        "fd_limit": fd_limit,
        "profile_settings": vars(p),
        "rows": result["rows"],
        "idle": result["idle"],
        "ratios": checks,
        "goals": GOALS,
        "ledgers": result["ledgers"],
        "ok": not bad,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        print_report(doc)
    if bad:
        print(f"error: lost or failed messages — {'; '.join(bad)}", file=sys.stderr)
        return 1
    missed = [r["name"] for r in checks if r.get("goal_met") is False]
    if args.check_goals and missed:
        print(f"error: goals missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
