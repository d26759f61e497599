"""Rebalance under load: scale 3 → 4 sidecars with N live clients, then move them back.

The e2e test (tests/k8s/test_rebalance_local.py) proves the mechanism with 300 clients; this
bench asks what it costs at 10K and whether it stays exact:

1. a private stack (`wsop up --detach --insecure --sidecars 3` in a temp WSOP_STATE_DIR,
   its own redis-server), N clients opened through the LB by one asyncio driver
   (websockets client, uvloop);
2. a steady background of direct messages between random clients throughout, each one
   carrying `[sender, seq]` so loss and duplicates are counted exactly (and the recipient
   checked); a steady window first gives the CPU baseline of that traffic;
3. `wsop scale --sidecars 4` (the new sidecar starts empty: the existing clients stay);
4. `wsop rebalance --local --epsilon 0.05 --dry-run` — the plan; its moves are the
   connections not on their final target, i.e. the minimum any rebalance to that
   placement must move;
5. `wsop rebalance --local --epsilon 0.05 --rate R --max-moves N`, timed, with the CPU
   of every stack process over it; then the sidecars' `/connections` are polled until
   every client sits on its planned target alone (the LB drains the old upstream for up
   to 1 s after each switch, so the move is only over then);
6. more traffic, a grace period, then the ledger: lost, duplicated, misrouted, errors,
   acks that said `delivered: 0`, clients that were closed.

Every `wsop` command runs as a subprocess while the driver's event loop keeps the traffic
going. The stack's processes inherit the driver's raised RLIMIT_NOFILE (checked in
/proc/<pid>/limits). Targets: after ≤ 1.05 max/mean, moves ≤ 1.1 × the minimum, 0 lost.

    .venv/bin/python bench/rebalance.py                  # 10K connections, rates 200, 500
    .venv/bin/python bench/rebalance.py --quick          # 1K connections, < 60 s
    .venv/bin/python bench/rebalance.py --connections 9000 --rates 200 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis
from _common import (
    machine_note,
    private_redis,
    proc_fd_count,
    proc_fd_limit,
    proc_rss_bytes,
    raise_fd_limit,
)
from _rebalance_driver import (
    TENANT,
    Driver,
    cpu_delta,
    cpu_snapshot,
    minimum_moves,
    off_target,
    private_stack,
    redis_peak,
    settle,
)
from _rebalance_report import EPSILON, print_report, targets
from rich.console import Console

from wsop.k8s.plan import max_over_mean
from wsop.ring import build

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python bench/rebalance.py"
LB_FDS_PER_CLIENT = 2
"""The LB holds the client's socket and the upstream's; a move adds the new upstream while
the old one drains (≤ 1 s), so a rate of R moves/s costs up to R more."""


@dataclass(frozen=True)
class Profile:
    """Sizes of one run; `quick` stays under a minute on 2 cores."""

    name: str
    connections: int
    rates: tuple[float, ...]
    msg_rate: float
    warmup_s: float = 2.0
    steady_s: float = 5.0
    tail_s: float = 2.0
    grace_s: float = 3.0
    settle_timeout_s: float = 30.0


FULL = Profile("full", 10_000, (200.0, 500.0), 500.0)
QUICK = Profile("quick", 1_000, (200.0,), 300.0, warmup_s=1.0, steady_s=2.0)


async def run_rate(
    p: Profile, rate: float, redis_url: str, r: redis.Redis, console: Console
) -> dict[str, Any]:
    """One full scenario on a fresh stack at one move rate."""
    out: dict[str, Any] = {"rate": rate, "connections": p.connections, "msg_rate": p.msg_rate}
    redis_pid = int(r.info("server")["process_id"])
    out["redis_maxclients"] = int(r.config_get("maxclients")["maxclients"])
    out["redis_clients"] = {"start": r.info("clients")["connected_clients"]}
    async with private_stack(3, redis_url, redis_pid) as stack:
        out["fd_limits"] = {name: proc_fd_limit(pid) for name, pid in stack.pids.items()}
        driver = Driver(stack.lb_url, p.connections)
        with console.status(f"opening {p.connections:,} clients through the LB…"):
            out["open_s"] = round(await driver.open(), 2)
        out["lb_fds_open"] = proc_fd_count(stack.pids["lb"])
        out["redis_clients"]["opened"] = r.info("clients")["connected_clients"]
        out["rss_mb"] = {n: round(proc_rss_bytes(pid) / 2**20) for n, pid in stack.pids.items()}
        driver.start_traffic(p.msg_rate)
        peak = asyncio.create_task(redis_peak(r, out["redis_clients"]))
        with console.status(f"steady traffic ({p.msg_rate:.0f} msg/s), CPU baseline…"):
            await asyncio.sleep(p.warmup_s)
            c0, t0 = cpu_snapshot(stack.measured), time.perf_counter()
            await asyncio.sleep(p.steady_s)
            steady = cpu_delta(c0, cpu_snapshot(stack.measured))
            wall = time.perf_counter() - t0
        out["baseline_cores"] = {k: round(v / wall, 3) for k, v in steady.items()}

        with console.status("wsop scale --sidecars 4…"):
            _, out["scale_s"] = await stack.wsop("scale", "--sidecars", "4")
            stack.reload()
        common = ["rebalance", "--local", "--epsilon", str(EPSILON)]
        budget = ["--max-moves", str(p.connections)]
        with console.status("wsop rebalance --dry-run…"):
            dry, out["dry_run_s"] = await stack.wsop(*common, "--dry-run", *budget)
        before = await asyncio.to_thread(stack.locations)

        with console.status(f"wsop rebalance --rate {rate:g} ({len(dry['plan'])} moves)…"):
            c0, t0 = cpu_snapshot(stack.measured), time.perf_counter()
            real, out["rebalance_s"] = await stack.wsop(*common, "--rate", f"{rate:g}", *budget)
            c1 = cpu_snapshot(stack.measured)
        final = {u: places[0] for u, places in before.items()}
        for mv in real["plan"]:
            final[int(mv["user"])] = mv["to"]
        with console.status("waiting until every client sits on its target…"):
            settle_s, after = await settle(stack, final, p.settle_timeout_s)
        c2, done_s = cpu_snapshot(stack.measured), time.perf_counter() - t0
        out["redis_clients"]["settled"] = r.info("clients")["connected_clients"]
        out["settled_s"] = None if settle_s is None else round(done_s, 3)
        out["cpu_rebalance_cli"] = cpu_delta(c0, c1)
        out["cpu_until_settled"] = cpu_delta(c0, c2)
        out["until_settled_wall_s"] = round(done_s, 3)
        out["off_target_at_end"], out["doubled_at_end"] = off_target(after, final)

        with console.status("more traffic, then the grace period…"):
            await asyncio.sleep(p.tail_s)
            await driver.stop_traffic()
            await asyncio.sleep(p.grace_s)
        again, _ = await stack.wsop(*common, "--dry-run", *budget)
        out["lb_upstream_failures"] = await asyncio.to_thread(stack.lb_failures)
        out["lb_log_errors"] = stack.log_errors("lb")
        status, _ = await stack.wsop("status")
        out["ledger"] = driver.tally()
        peak.cancel()
        await driver.close()

    owner = build(real["algo"], real["members"]).owner
    moved_users = {u for u in before if before[u] != after.get(u)}
    final_loads: Counter[str] = Counter(dict.fromkeys(real["members"], 0))
    for places in after.values():
        final_loads.update(places)
    out.update(
        {
            "before": real["before"],
            "after": real["after"],
            "planned_after": real["planned_after"],
            "capacity": real["capacity"],
            "loads_before": real["loads_before"],
            "loads_after": real["loads_after"],
            "dry_run_moves": dry["moves"],
            "plan_identical": dry["plan"] == real["plan"],
            "moves": real["moves"],
            "moved": real["moved"],
            "moved_connections": real["moved_connections"],
            "errors": real["errors"][:10],
            "error_count": len(real["errors"]),
            "skipped_pods": real["skipped_pods"],
            "observed": len(moved_users),
            "observed_loads_after": dict(sorted(final_loads.items())),
            "observed_after": max_over_mean(final_loads, len(real["members"])),
            "minimum": {
                **minimum_moves(dry),
                "not_on_owner": sum(
                    1 for u, places in before.items() if places != [owner((TENANT, u))]
                ),
            },
            "second_dry_run_moves": again["moves"],
            "final_connections": sum(s["connections"] or 0 for s in status["sidecars"]),
            "lb_connections": status["lb"]["connections"],
        }
    )
    minimum = out["minimum"]["not_on_target"]
    out["moves_over_minimum"] = out["moved_connections"] / minimum if minimum else None
    out["observed_over_minimum"] = len(moved_users) / minimum if minimum else None
    out["per_move_ms"] = out["rebalance_s"] / out["moved"] * 1000 if out["moved"] else None
    # The CLI's fixed cost (start-up, gather, plan) is what the dry run measures alone.
    execute_s = max(0.0, out["rebalance_s"] - out["dry_run_s"])
    out["execute_s"] = round(execute_s, 3)
    out["execute_per_move_ms"] = execute_s / out["moved"] * 1000 if out["moved"] else None
    out["achieved_rate"] = out["moved"] / out["rebalance_s"] if out["rebalance_s"] else None
    cpu = out["cpu_until_settled"]
    out["cpu_extra_over_baseline"] = {
        k: round(v - out["baseline_cores"].get(k, 0.0) * done_s, 3) for k, v in cpu.items()
    }
    return out


# --- report ---------------------------------------------------------------------------


def code_note() -> str:
    """Which wsop the stack ran: the measured code must be named, because the working
    tree may hold someone's uncommitted rework (run with PYTHONPATH=<export of a commit>
    to measure a commit; the stack's processes inherit PYTHONPATH)."""
    import wsop

    where = Path(wsop.__file__).resolve().parent
    if where != ROOT / "wsop":
        return f"wsop imported from {where} (PYTHONPATH)"
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "wsop"],
        capture_output=True, text=True,
    ).stdout.split("\n")  # fmt: skip
    changed = [line[3:] for line in dirty if line.strip()]
    return f"working tree at {rev}" + (f", uncommitted: {', '.join(changed)}" if changed else "")


async def run(p: Profile, quiet: bool) -> dict[str, Any]:
    console = Console(stderr=True, quiet=quiet)
    runs = []
    with private_redis() as (r, info):
        for rate in p.rates:
            console.print(f"run at --rate {rate:g}…")
            url = f"redis://127.0.0.1:{info.port}/0"
            runs.append(await run_rate(p, rate, url, r, console))
    return {"runs": runs, "redis": f"{info.version} ({info.allocator})"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 connections, < 60 s")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--connections", type=int, help="clients through the LB (default 10000)")
    parser.add_argument("--rates", help="comma-separated --rate values, one fresh stack each")
    parser.add_argument("--msg-rate", type=float, help="background direct messages per second")
    args = parser.parse_args()
    import uvloop

    fd_limit = raise_fd_limit()
    p = QUICK if args.quick else FULL
    if args.connections is not None:
        p = replace(p, connections=args.connections)
    if args.rates:
        p = replace(p, rates=tuple(float(x) for x in args.rates.split(",")))
    if args.msg_rate is not None:
        p = replace(p, msg_rate=args.msg_rate)
    need = LB_FDS_PER_CLIENT * p.connections + int(max(p.rates)) + 64
    if need > fd_limit[0]:
        print(
            f"warning: the LB needs ~{need:,} file descriptors for {p.connections:,} clients "
            f"(2 per client + one per move draining + a few), RLIMIT_NOFILE is "
            f"{fd_limit[0]:,} (hard {fd_limit[1]:,}): expect refused connections",
            file=sys.stderr,
        )
    command = " ".join([COMMAND, *sys.argv[1:]])
    code = code_note()
    started = time.perf_counter()
    result = uvloop.run(run(p, quiet=args.json))
    doc = {
        "command": command,
        "profile": p.name,
        "machine": machine_note(),
        "redis": result["redis"],
        "code": code,
        "fd_limit": list(fd_limit),
        "connections": p.connections,
        "msg_rate": p.msg_rate,
        "epsilon": EPSILON,
        "profile_settings": vars(p),
        "runs": result["runs"],
        "targets": [
            {"rate": r["rate"], "target": t, "measured": m, "pass": ok}
            for r in result["runs"]
            for t, m, ok in targets(r)
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)
        print_report(console, doc)
        console.print(f"\n(total run {doc['seconds']} s)")
    return 0 if all(t["pass"] for t in doc["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
