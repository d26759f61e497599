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

`--lb-args="--trunks 4"` adds one more wsop system to every row: a second LB with those
extra flags in front of the same sidecars and Redis (order A B C C B A), so an LB option
is priced against the stack's own LB and Socket.IO in the same run.

Every message must be acked and every delivery must arrive: anything lost (or an error,
or a broken connection) fails the run with exit status 1 after the report.

    .venv/bin/python bench/peers.py             # ~3 min on 2 cores
    .venv/bin/python bench/peers.py --quick     # < 1 min sanity run
    .venv/bin/python bench/peers.py --json      # one JSON document on stdout
    .venv/bin/python bench/peers.py --lb-args="--trunks 4"   # + wsop behind `lb --trunks 4`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import machine_note, private_redis, raise_fd_limit
from _peers_driver import SocketIO, Wsop
from _peers_report import GOALS, print_report, ratios, row_summary
from _peers_servers import (
    Missing,
    ensure_node_modules,
    extra_lb,
    haproxy,
    socketio_nodes,
    tool_versions,
    workdir,
)
from _peers_workloads import (
    FULL,
    HAPROXY_RELAY,
    QUICK,
    RELAY,
    TEAM,
    TEAM_SIZE,
    TEAM_TENANT,
    WORKLOADS,
    Profile,
    Results,
    Status,
    System,
    direct_rows,
    idle_memory,
    team_rows,
)
from _private_stack import private_stack, seed_team

from wsop.ring import build

COMMAND = ".venv/bin/python bench/peers.py"


# --- the run --------------------------------------------------------------------------


async def run(p: Profile, status: Status) -> dict[str, Any]:
    """Start both systems, both HAProxies and any extra LB, run the chosen workloads,
    stop everything.

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
        sio = System("socket.io", SocketIO, hap.url, {**sio_pids, "driver": me}, list(sio_pids),
                     collectable=tuple(n.pid for n in nodes))  # fmt: skip
        relay_pids = {"haproxy": relay.pid, **ws.sidecar_pids, "redis": redis_w}
        hap_relay = System(HAPROXY_RELAY, Wsop, relay.url, {**relay_pids, "driver": me},
                           list(relay_pids), placement.owner)  # fmt: skip
        wsops = [wsop]
        for i, flags in enumerate(p.lb_args, 1):
            status(f"starting an extra LB: wsop lb {flags}…")
            lb = stack.enter_context(
                extra_lb(ws.state / "stack.json", ws.algo, shlex.split(flags), wd, f"lb{i}")
            )
            pids = {"lb": lb.pid, **ws.sidecar_pids, "redis": redis_w}
            wsops.append(System(f"wsop {flags}", Wsop, lb.url, {**pids, "driver": me},
                                list(pids), placement.owner, tag=f"-v{i}"))  # fmt: skip
        compared = (*wsops, sio)

        idle = {}
        if "idle" in p.workloads:
            for system in compared:
                status(f"{p.idle_conns:,} idle connections to {system.name}…")
                idle[system.name] = await idle_memory(p, system)
        out = Results()
        if "direct" in p.workloads or "relay" in p.workloads:
            await direct_rows(p, compared, hap_relay, out, status)
        if "team" in p.workloads:
            for system in wsops:
                seed_team(rw, system.tenant(TEAM_TENANT), TEAM, range(TEAM_SIZE))
            await team_rows(p, compared, rw, out, status)

        systems = {s.name: s for s in (*compared, hap_relay)}
        rows = [
            row_summary(label, name, runs, systems[name].servers, p, out.crossing.get(name))
            for label, by_system in out.phases.items()
            for name, runs in by_system.items()
        ]
        variants = [s.name for s in wsops[1:]]
        return {
            "rows": rows,
            "idle": idle,
            "variants": variants,
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
    parser.add_argument(
        "--lb-args", action="append", metavar="FLAGS", default=[],
        help="also measure wsop behind one more LB started with these extra `wsop lb` flags "
        '(same sidecars and Redis; repeatable; write --lb-args="--trunks 4")',
    )  # fmt: skip
    args = parser.parse_args()
    for flags in args.lb_args:
        try:
            if not shlex.split(flags):
                parser.error("--lb-args: give extra `wsop lb` flags, e.g. --lb-args='--trunks 4'")
        except ValueError as exc:
            parser.error(f"--lb-args {flags!r}: {exc}")
    if len(set(args.lb_args)) != len(args.lb_args):
        parser.error("--lb-args: the same flags twice")
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
        "lb_args": tuple(args.lb_args) or None,
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
    done = {
        name: led["delivered"] / led["expected_deliveries"] if led["expected_deliveries"] else None
        for name, led in result["ledgers"].items()
    }
    checks = ratios(result["rows"], result["idle"], result["variants"])
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
        "variants": result["variants"],
        "ratios": checks,
        "goals": GOALS,
        "ledgers": result["ledgers"],
        "completeness": done,
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
