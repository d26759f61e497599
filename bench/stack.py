"""Stack throughput: messages/s, latency, CPU per message and memory per idle connection.

One asyncio driver (websockets client on uvloop) measures three servers the same way:

(a) a bare websockets echo server: the floor, what one recv + one send costs in this
    library with our settings (compression off, uvloop, same `serve` arguments);
(b) direct messages through the LB and 2 sidecars (a private stack: its own state dir,
    its own redis-server, started with `wsop up --detach --insecure --sidecars 2`);
(c) team messages fanned out 1→50 (one tenant, one 50-member team, all 50 online).

The driver is pipelined (every sender connection keeps a window of messages in flight),
so throughput is bounded by the machine, not by round trips. Absolute msgs/s depend on
how the cores are shared between the driver and the servers; the CPU-seconds each
server process is charged per message (/proc/<pid>/stat over the timed window) do not,
which is why the targets are stated per CPU-second:

- ≥ 30K messages per sidecar CPU-second (all sidecars' CPU summed);
- the LB's CPU per message ≤ 20% of the sidecars';
- ≤ 20 KB RSS (LB + sidecars) per idle connection with 5K connections open.

    .venv/bin/python bench/stack.py            # ~70 s on 2 cores
    .venv/bin/python bench/stack.py --quick    # < 30 s smoke test
    .venv/bin/python bench/stack.py --json     # one JSON document on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis
from _common import (
    machine_note,
    private_redis,
    proc_rss_bytes,
    raise_fd_limit,
)
from _private_stack import Stack, private_stack, seed_team
from _stack_driver import Client, Driver, close_clients, open_clients
from _stack_report import print_report, targets
from rich.console import Console

from wsop import protocol
from wsop.ring import build

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python bench/stack.py"
DIRECT_TENANT, TEAM_TENANT, IDLE_TENANT = "bench-dm", "bench-team", "bench-idle"
TEAM, TEAM_SIZE = "fan50", 50


@dataclass(frozen=True)
class Profile:
    """Sizes of one run; `quick` keeps the whole run under 30 s."""

    name: str
    warmup_s: float
    seconds: float
    unloaded_s: float
    idle_conns: int
    direct_conns: int
    window: int
    team_senders: int
    team_window: int
    py_spy_dir: str | None = None
    """When set, py-spy samples the LB and each server process in every loaded window."""


FULL = Profile("full", 2.0, 10.0, 3.0, 5000, 64, 4, 10, 2)
QUICK = Profile("quick", 0.5, 2.5, 1.0, 1000, 32, 4, 6, 2)


# --- processes ------------------------------------------------------------------------


async def _echo_main() -> None:
    """The (a) server: the sidecar's own `serve` settings, and nothing else per frame."""
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    server = await serve(
        echo,
        "127.0.0.1",
        0,
        max_size=protocol.DEFAULT_MAX_FRAME_BYTES,
        compression=None,
        ping_interval=30,
        close_timeout=2,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


@contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    """(url, pid) of an echo server in a child process (this file, `--echo-server`)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--echo-server"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"ws://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- what the clients send ----------------------------------------------------------


def direct_frame(c: Client, mid: str, now_ns: int) -> str:
    return f'{{"type":"direct","to":{c.to},"data":{now_ns},"id":"{mid}"}}'


def team_frame(c: Client, mid: str, now_ns: int) -> str:
    return f'{{"type":"team","teams":["{TEAM}"],"data":{now_ns},"id":"{mid}"}}'


def _row(
    label: str,
    loaded: dict[str, Any],
    unloaded: dict[str, Any],
    ledger: dict[str, int],
    settings: str,
    fanout: int,
    server_names: list[str],
) -> dict[str, Any]:
    """Derived numbers for one row; `server_names` are the processes the target is on."""
    msgs, wall, cpu = loaded["acks"], loaded["wall_s"], loaded["cpu_s"]
    server_cpu = sum(cpu[n] for n in server_names)
    lb_cpu = cpu.get("lb")
    per_msg = server_cpu / msgs if msgs else None
    row: dict[str, Any] = {
        "row": label,
        "settings": settings,
        "fanout": fanout,
        "msgs_per_s": msgs / wall,
        "deliveries_per_s": loaded["deliveries"] / wall,
        "latency_loaded_ms": {k: loaded[f"delivery_{k}_ms"] for k in ("p50", "p99")},
        "ack_latency_loaded_ms": {k: loaded[f"ack_{k}_ms"] for k in ("p50", "p99")},
        "latency_unloaded_ms": {k: unloaded[f"delivery_{k}_ms"] for k in ("p50", "p99")},
        "ack_latency_unloaded_ms": {k: unloaded[f"ack_{k}_ms"] for k in ("p50", "p99")},
        "server_cpu_s": round(server_cpu, 3),
        "server_us_per_msg": per_msg * 1e6 if per_msg else None,
        "msgs_per_server_cpu_s": 1 / per_msg if per_msg else None,
        "deliveries_per_server_cpu_s": loaded["deliveries"] / server_cpu if server_cpu else None,
        "lb_us_per_msg": lb_cpu / msgs * 1e6 if lb_cpu is not None and msgs else None,
        "lb_share_of_sidecars": lb_cpu / server_cpu if lb_cpu is not None and server_cpu else None,
        "redis_us_per_msg": cpu["redis"] / msgs * 1e6 if "redis" in cpu and msgs else None,
        "server_kernel_share": (
            sum(loaded["kernel_s"][n] for n in server_names) / server_cpu if server_cpu else None
        ),
        "lb_kernel_share": loaded["kernel_s"]["lb"] / lb_cpu if lb_cpu else None,
        "server_syscalls_per_msg": (
            sum(loaded["syscalls"][n] for n in server_names) / msgs if msgs else None
        ),
        "lb_syscalls_per_msg": (
            loaded["syscalls"]["lb"] / msgs if "lb" in loaded["syscalls"] and msgs else None
        ),
        "cores_used": {name: round(v / wall, 2) for name, v in cpu.items()},
        "ledger": ledger,
    }
    return row


async def bench_echo(url: str, pid: int, p: Profile) -> dict[str, Any]:
    clients = await open_clients(url, None, list(range(p.direct_conns)))
    driver = Driver(clients, 1, echo=True)
    pids = {"echo": pid, "driver": os.getpid()}
    spy = (p.py_spy_dir, "echo") if p.py_spy_dir else None
    loaded = await driver.phase(clients, direct_frame, p.window, p.warmup_s, p.seconds, pids, spy)
    unloaded = await driver.phase(clients[:1], direct_frame, 1, 0.2, p.unloaded_s, pids)
    ledger = driver.ledger()
    await driver.close()
    settings = f"{p.direct_conns} conns × window {p.window}"
    row = _row("(a) bare websockets echo", loaded, unloaded, ledger, settings, 1, ["echo"])
    # The library's own floor for the memory target: one server connection + its handler.
    await asyncio.sleep(0.5)
    before = proc_rss_bytes(pid)
    idle = await open_clients(url, None, list(range(p.idle_conns)))
    await asyncio.sleep(1.0)
    row["idle_bytes_per_conn"] = (proc_rss_bytes(pid) - before) / p.idle_conns
    await close_clients(idle)
    return row


def _stack_pids(stack: Stack, r: redis.Redis) -> dict[str, int]:
    return {
        **stack.pids,
        "redis": int(r.info("server")["process_id"]),
        "driver": os.getpid(),
    }


async def bench_direct(stack: Stack, r: redis.Redis, p: Profile) -> dict[str, Any]:
    """Each connection sends to another connected user, a fixed random derangement."""
    users = list(range(p.direct_conns))
    clients = await open_clients(stack.lb_url, DIRECT_TENANT, users)
    rng = random.Random(7)
    targets = users[1:] + users[:1]
    rng.shuffle(targets)
    while any(t == u for t, u in zip(targets, users, strict=True)):
        rng.shuffle(targets)
    for c, t in zip(clients, targets, strict=True):
        c.to = t
    owner = build(stack.algo, sorted(stack.sidecar_pids)).owner
    cross = sum(owner((DIRECT_TENANT, c.user)) != owner((DIRECT_TENANT, c.to)) for c in clients)
    driver = Driver(clients, 1, echo=False)
    pids = _stack_pids(stack, r)
    spy = (p.py_spy_dir, "direct") if p.py_spy_dir else None
    loaded = await driver.phase(clients, direct_frame, p.window, p.warmup_s, p.seconds, pids, spy)
    unloaded = await driver.phase(clients[:1], direct_frame, 1, 0.2, p.unloaded_s, pids)
    ledger = driver.ledger()
    await driver.close()
    settings = (
        f"{p.direct_conns} conns × window {p.window}; {cross}/{len(clients)} pairs cross sidecars"
    )
    row = _row(
        "(b) direct via LB + 2 sidecars", loaded, unloaded, ledger, settings, 1,
        list(stack.sidecar_pids),
    )  # fmt: skip
    row["cross_sidecar_fraction"] = cross / len(clients)
    return row


async def bench_team(stack: Stack, r: redis.Redis, p: Profile) -> dict[str, Any]:
    """50 members online, each on its own connection; a few of them send to the team.

    Every message reaches all 50 connections (the sender's own included: it is an
    online member), so one message = 50 deliveries and the ack says `delivered: 50`.
    """
    members = range(TEAM_SIZE)
    seed_team(r, TEAM_TENANT, TEAM, members)
    clients = await open_clients(stack.lb_url, TEAM_TENANT, list(members))
    await asyncio.sleep(0.3)  # presence bits are set as each sidecar accepts
    driver = Driver(clients, TEAM_SIZE, echo=False)
    pids = _stack_pids(stack, r)
    senders = clients[: p.team_senders]
    spy = (p.py_spy_dir, "team") if p.py_spy_dir else None
    loaded = await driver.phase(
        senders, team_frame, p.team_window, p.warmup_s, p.seconds, pids, spy
    )
    unloaded = await driver.phase(clients[:1], team_frame, 1, 0.2, p.unloaded_s, pids)
    ledger = driver.ledger()
    await driver.close()
    settings = f"{p.team_senders} senders × window {p.team_window}, {TEAM_SIZE} receivers"
    return _row(
        "(c) team 1→50 via LB + 2 sidecars", loaded, unloaded, ledger, settings, TEAM_SIZE,
        list(stack.sidecar_pids),
    )  # fmt: skip


async def bench_idle(stack: Stack, p: Profile) -> dict[str, Any]:
    """RSS of the LB and the sidecars before and after `idle_conns` idle connections.

    A warm-up batch is opened and closed first, so one-off allocations (imports on the
    first handshake, the id-mode cache) are in the baseline, not in the per-connection
    figure.
    """
    warm = await open_clients(stack.lb_url, IDLE_TENANT, list(range(100)))
    await close_clients(warm)
    await asyncio.sleep(1.0)
    names = list(stack.pids)
    before = {n: proc_rss_bytes(stack.pids[n]) for n in names}
    started = time.perf_counter()
    clients = await open_clients(stack.lb_url, IDLE_TENANT, list(range(p.idle_conns)))
    open_s = time.perf_counter() - started
    await asyncio.sleep(1.5)
    after = {n: proc_rss_bytes(stack.pids[n]) for n in names}
    await close_clients(clients)
    await asyncio.sleep(1.0)
    n = p.idle_conns
    delta = {k: after[k] - before[k] for k in names}
    return {
        "connections": n,
        "open_seconds": round(open_s, 2),
        "rss_before": before,
        "rss_after": after,
        "bytes_per_conn": {k: v / n for k, v in delta.items()},
        "total_bytes_per_conn": sum(delta.values()) / n,
    }


async def run(p: Profile, quiet: bool) -> dict[str, Any]:
    console = Console(stderr=True, quiet=quiet)
    rows: list[dict[str, Any]] = []
    with console.status("(a) echo server…"), echo_server() as (url, pid):
        rows.append(await bench_echo(url, pid, p))
    with private_redis() as (r, info):
        console.print("starting the private stack…")
        with private_stack(2, f"redis://127.0.0.1:{info.port}/0") as stack:
            with console.status(f"{p.idle_conns:,} idle connections…"):
                idle = await bench_idle(stack, p)
            with console.status("(b) direct messages…"):
                rows.append(await bench_direct(stack, r, p))
            with console.status("(c) team messages…"):
                rows.append(await bench_team(stack, r, p))
    return {"rows": rows, "idle": idle, "redis": f"{info.version} ({info.allocator})"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test < 30 s")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    for flag, kind, what in (
        ("--seconds", float, "timed window of each loaded phase"),
        ("--conns", int, "(a)/(b): connections, all of them sending"),
        ("--window", int, "(a)/(b): messages in flight per connection"),
        ("--team-senders", int, "(c): how many of the 50 members send"),
        ("--team-window", int, "(c): messages in flight per sender"),
        ("--idle-conns", int, "connections held open for the memory figure"),
        ("--py-spy-dir", str, "record py-spy profiles (raw collapsed stacks) here"),
    ):
        parser.add_argument(flag, type=kind, help=f"{what} (overrides the profile)")
    args = parser.parse_args()
    import uvloop

    if args.echo_server:
        uvloop.run(_echo_main())
        return 0
    fd_limit = raise_fd_limit()[0]
    p = QUICK if args.quick else FULL
    overrides = {
        "seconds": args.seconds,
        "direct_conns": args.conns,
        "window": args.window,
        "team_senders": args.team_senders,
        "team_window": args.team_window,
        "idle_conns": args.idle_conns,
        "py_spy_dir": args.py_spy_dir,
    }
    p = replace(p, **{k: v for k, v in overrides.items() if v is not None})
    command = " ".join([COMMAND, *sys.argv[1:]])
    started = time.perf_counter()
    result = uvloop.run(run(p, quiet=False))
    checks = targets(result["rows"], result["idle"])
    doc = {
        "command": command,
        "profile": p.name,
        "machine": machine_note(),
        "redis": result["redis"],
        "fd_limit": fd_limit,
        "profile_settings": vars(p),
        "rows": result["rows"],
        "idle": result["idle"],
        "targets": [{"target": t, "measured": m, "pass": ok} for t, m, ok in checks],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)
        print_report(console, {**doc, "targets_tuples": checks})
        console.print(f"\n(total run {doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
