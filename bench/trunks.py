"""LB ↔ sidecar trunks against one connection per client: CPU per team delivery.

The same private stack (`wsop up --sidecars 2`, its own Redis) and the same driver as
`bench/stack.py`, started once per setting — the LB with `WSOP_LB_TRUNKS=0` (each
client's sidecar leg its own TCP connection) and with `WSOP_LB_TRUNKS=N` (the legs are
channels on N trunks per sidecar) — in ABBA order, so drift on a shared machine hits
both alike. Each run measures row (c) of bench/stack.py, team messages fanned out 1→50,
and row (b), direct messages; the figure that matters is CPU per delivery (LB +
sidecars + Redis, /proc over the timed window) with trunks ÷ without, in the same run.

    .venv/bin/python bench/trunks.py              # ~2.5 min on 2 cores
    .venv/bin/python bench/trunks.py --quick      # ~1 min smoke test
    .venv/bin/python bench/trunks.py --trunks 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

from _common import machine_note, private_redis, raise_fd_limit
from _private_stack import private_stack
from rich.console import Console
from rich.table import Table
from stack import FULL, QUICK, TEAM_SIZE, Profile, bench_direct, bench_team

COMMAND = ".venv/bin/python bench/trunks.py"
TRUNKS_ENV = "WSOP_LB_TRUNKS"


def per_delivery(row: dict[str, Any], fanout: int) -> dict[str, float]:
    """µs of CPU per delivery: LB, sidecars, Redis and their sum; deliveries/s; lost."""
    lb = row["lb_us_per_msg"] / fanout
    sidecars = row["server_us_per_msg"] / fanout
    redis_us = (row["redis_us_per_msg"] or 0.0) / fanout
    lost = row["ledger"]["lost"] + row["ledger"]["unacked"] + row["ledger"]["errors"]
    return {
        "lb_us": lb,
        "sidecars_us": sidecars,
        "redis_us": redis_us,
        "total_us": lb + sidecars + redis_us,
        "deliveries_per_s": row["deliveries_per_s"],
        "lb_syscalls": (row["lb_syscalls_per_msg"] or 0.0) / fanout,
        "sidecar_syscalls": (row["server_syscalls_per_msg"] or 0.0) / fanout,
        "p99_ms": row["latency_loaded_ms"]["p99"],
        "lost": lost,
    }


async def one_run(trunks: int, p: Profile, redis_url: str, r: Any) -> dict[str, Any]:
    os.environ[TRUNKS_ENV] = str(trunks)  # `wsop up` passes its environment to the LB
    try:
        with private_stack(2, redis_url) as stack:
            team = await bench_team(stack, r, p)
            direct = await bench_direct(stack, r, p)
    finally:
        os.environ.pop(TRUNKS_ENV, None)
    return {
        "trunks": trunks,
        "team": per_delivery(team, TEAM_SIZE),
        "direct": per_delivery(direct, 1),
    }


def summarise(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workload in ("team", "direct"):
        by: dict[int, dict[str, float]] = {}
        for setting in (0, n):
            mine = [run[workload] for run in runs if run["trunks"] == setting]
            by[setting] = {k: statistics.mean(m[k] for m in mine) for k in mine[0]}
        ratios = {
            k: by[n][k] / by[0][k] if by[0][k] else None
            for k in ("lb_us", "sidecars_us", "total_us", "deliveries_per_s")
        }
        out[workload] = {"without": by[0], "with": by[n], "ratio": ratios}
    return out


def print_report(console: Console, doc: dict[str, Any]) -> None:
    n = doc["trunks"]
    console.print(f"[bold]trunks benchmark[/] ({doc['profile']}, ABBA: {doc['order']})")
    console.print(f"reproduce: [cyan]{doc['command']}[/]")
    console.print(f"machine: {doc['machine']}")
    for workload, unit in (("team", "team 1→50, per delivery"), ("direct", "direct, per msg")):
        s = doc["summary"][workload]
        t = Table(title=f"{unit}: --trunks 0 vs --trunks {n} (means of the runs)")
        for col in ("", "LB µs", "sidecars µs", "Redis µs", "total µs", "deliv/s",
                    "LB syscalls", "sidecar syscalls", "p99 ms", "lost"):  # fmt: skip
            t.add_column(col, justify="left" if not col else "right")
        for label, v in (("trunks 0", s["without"]), (f"trunks {n}", s["with"])):
            t.add_row(
                label, f"{v['lb_us']:.2f}", f"{v['sidecars_us']:.2f}", f"{v['redis_us']:.2f}",
                f"{v['total_us']:.2f}", f"{v['deliveries_per_s']:,.0f}", f"{v['lb_syscalls']:.2f}",
                f"{v['sidecar_syscalls']:.2f}", f"{v['p99_ms']:.1f}", f"{v['lost']:.0f}",
            )  # fmt: skip
        ratio = s["ratio"]
        t.add_row(
            "ratio", f"{ratio['lb_us']:.2f}×", f"{ratio['sidecars_us']:.2f}×", "",
            f"{ratio['total_us']:.2f}×", f"{ratio['deliveries_per_s']:.2f}×", "", "", "", "",
        )  # fmt: skip
        console.print(t)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunks", type=int, default=2, help="trunks per sidecar (vs 0)")
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke test")
    parser.add_argument("--seconds", type=float, help="timed window of each loaded phase")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    if args.trunks < 1:
        parser.error("--trunks must be ≥ 1 (it is compared with 0)")
    import uvloop

    raise_fd_limit()
    p = QUICK if args.quick else FULL
    if args.seconds:
        p = replace(p, seconds=args.seconds)
    order = [0, args.trunks, args.trunks, 0]
    started = time.perf_counter()
    console = Console(stderr=True, quiet=args.json)
    runs = []
    with private_redis() as (r, info):
        for trunks in order:
            with console.status(f"--trunks {trunks}…"):
                runs.append(uvloop.run(one_run(trunks, p, f"redis://127.0.0.1:{info.port}/0", r)))
    doc = {
        "command": " ".join([COMMAND, *sys.argv[1:]]),
        "profile": p.name,
        "machine": machine_note(),
        "trunks": args.trunks,
        "order": order,
        "runs": runs,
        "summary": summarise(runs, args.trunks),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        print_report(Console(width=160), doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
