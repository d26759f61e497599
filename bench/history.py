"""What recovery's history costs per delivery: memory and Redis Streams against off.

Three stacks, one after the other in one run (each a private `wsop up --sidecars 2
--history X` on one private redis-server, flushed between), driven by bench/stack.py's
driver and rows: (b) direct messages (64 users, half the pairs across sidecars) and
(c) a 50-member team, all online (every message is 50 deliveries, each recorded in its
recipient's log). Figures are CPU per delivery from /proc over the timed window: the
two sidecars', and the sidecars' plus Redis's (the Redis backend moves work there).
Ratios are against `--history off` in the same run. The order is mirrored (off,
memory, redis, redis, memory, off with `--rounds 2`, the default) and each figure is
the mean of its rounds, so a machine that drifts during the run is evened out.

    .venv/bin/python bench/history.py            # ~3 min on 2 cores
    .venv/bin/python bench/history.py --quick    # ~1 min smoke test
    .venv/bin/python bench/history.py --json     # one JSON document on stdout
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

import redis
from _common import machine_note, private_redis, raise_fd_limit
from _private_stack import private_stack
from rich.console import Console
from rich.table import Table
from stack import FULL, QUICK, Profile, bench_direct, bench_team

COMMAND = ".venv/bin/python bench/history.py"
BACKENDS = ("off", "memory", "redis")


def micro(messages: int = 4000, fanout: int = 50) -> dict[str, float]:
    """In-process µs per delivery of what the in-memory history adds on the owner: the
    record (at steady state: every log full, so each record evicts one) and the
    recipient's own frame (offset spliced in, encoded) — against the shared encode
    the delivery does without a history."""
    from wsop import protocol
    from wsop.sidecar.history import MemoryHistory

    history = MemoryHistory()
    frame = protocol.encode_message(1, {"text": "x" * 100}, "m1", 0, ["fan50"])
    users = list(range(fanout))
    for i in range(200):  # fill every log to its count bound
        history.record("t", users, frame, float(i))
    started = time.perf_counter()
    for i in range(messages):
        for offset in history.record("t", users, frame, 200.0 + i):
            protocol.with_offset(frame, offset).encode()
    with_history = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(messages):
        frame.encode()
    without = time.perf_counter() - started
    per = messages * fanout
    return {"history_us": with_history / per * 1e6, "shared_encode_us": without / per * 1e6}


def per_delivery(row: dict[str, Any]) -> dict[str, Any]:
    """µs of CPU per delivery: the sidecars', and with Redis's; and the ledger."""
    rate = row["deliveries_per_s"]
    sidecar_cores = sum(v for k, v in row["cores_used"].items() if k.startswith("s"))
    redis_cores = row["cores_used"].get("redis", 0.0)
    return {
        "sidecar_us": sidecar_cores / rate * 1e6,
        "with_redis_us": (sidecar_cores + redis_cores) / rate * 1e6,
        "deliveries_per_s": rate,
        "latency_p50_ms": row["latency_loaded_ms"]["p50"],
        "latency_p99_ms": row["latency_loaded_ms"]["p99"],
        "ledger": row["ledger"],
    }


async def measure(backend: str, r: redis.Redis, url: str, p: Profile) -> dict[str, Any]:
    r.flushall()
    with private_stack(2, url, backend) as stack:
        direct = await bench_direct(stack, r, p)
        team = await bench_team(stack, r, p)
    return {"direct": per_delivery(direct), "team": per_delivery(team)}


def summarize(runs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean of the rounds per (backend, row), and its ratio to off."""
    out = []
    for kind in ("direct", "team"):
        means = {}
        for backend in BACKENDS:
            mine = [run[kind] for b, run in runs if b == backend]
            means[backend] = {
                k: statistics.fmean(m[k] for m in mine)
                for k in ("sidecar_us", "with_redis_us", "deliveries_per_s", "latency_p50_ms")
            }
            means[backend]["lost"] = sum(m["ledger"].get("lost", 0) for m in mine)
            means[backend]["errors"] = sum(m["ledger"].get("errors", 0) for m in mine)
        base = means["off"]
        for backend in BACKENDS:
            m = means[backend]
            out.append(
                {
                    "row": kind,
                    "backend": backend,
                    **{k: round(v, 3) for k, v in m.items()},
                    "sidecar_ratio": round(m["sidecar_us"] / base["sidecar_us"], 3),
                    "with_redis_ratio": round(m["with_redis_us"] / base["with_redis_us"], 3),
                }
            )
    return out


async def run(p: Profile, rounds: int, console: Console) -> dict[str, Any]:
    order: list[str] = []
    for i in range(rounds):
        order += list(BACKENDS) if i % 2 == 0 else list(reversed(BACKENDS))
    runs = []
    with private_redis() as (r, info):
        url = f"redis://127.0.0.1:{info.port}/0"
        for backend in order:
            with console.status(f"--history {backend}…"):
                runs.append((backend, await measure(backend, r, url, p)))
    return {"order": order, "runs": runs, "redis": f"{info.version} ({info.allocator})"}


def print_report(console: Console, doc: dict[str, Any]) -> None:
    console.print(f"[bold]{doc['command']}[/] — {doc['machine']}; redis {doc['redis']}")
    console.print(f"order: {', '.join(doc['order'])}")
    table = Table(title="CPU per delivery, by history backend (ratios: ÷ off, same run)")
    for col in ("row", "history", "sidecars µs", "÷ off", "+ redis µs", "÷ off",
                "deliveries/s", "p50 ms", "lost"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("row", "history") else "right")
    for s in doc["summary"]:
        table.add_row(
            s["row"], s["backend"], f"{s['sidecar_us']:.2f}", f"{s['sidecar_ratio']:.2f}×",
            f"{s['with_redis_us']:.2f}", f"{s['with_redis_ratio']:.2f}×",
            f"{s['deliveries_per_s']:,.0f}", f"{s['latency_p50_ms']:.2f}",
            str(int(s["lost"] + s["errors"])),
        )  # fmt: skip
    console.print(table)
    m = doc["micro"]
    console.print(
        f"in-process, the in-memory history adds {m['history_us']:.2f} µs per delivery "
        f"(record with eviction + the recipient's own frame; the shared encode it "
        f"replaces: {m['shared_encode_us']:.3f} µs)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke test")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--rounds", type=int, default=2, help="mirrored rounds (default 2)")
    parser.add_argument("--seconds", type=float, help="timed window of each loaded phase")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    import uvloop

    raise_fd_limit()
    p = QUICK if args.quick else FULL
    p = replace(p, idle_conns=0, **({"seconds": args.seconds} if args.seconds else {}))
    started = time.perf_counter()
    console = Console(stderr=True, quiet=args.json)
    result = uvloop.run(run(p, args.rounds, console))
    result["micro"] = micro()
    doc = {
        "command": " ".join([COMMAND, *sys.argv[1:]]),
        "machine": machine_note(),
        "profile": p.name,
        "redis": result["redis"],
        "order": result["order"],
        "summary": summarize(result["runs"]),
        "micro": result["micro"],
        "runs": [{"backend": b, **r} for b, r in result["runs"]],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        out = Console()
        if not out.is_terminal:
            out.width = max(out.width, 140)
        print_report(out, doc)
        out.print(f"(total run {doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
