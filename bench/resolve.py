"""Benchmark of issue 2: recipients of a team message — seed-post Lua vs Redis sets vs wsop.

One run on a private redis-server this script starts itself (Debian's `redis-server`
from PATH when present), so a developer's embedded Redis is never touched:

    .venv/bin/python bench/resolve.py            # full size (~2-4 min on 2 cores)
    .venv/bin/python bench/resolve.py --quick    # smoke test, < 20 s
    .venv/bin/python bench/resolve.py --json     # one JSON document on stdout

Rows of the latency table, all computing (OR of 3 team sets) AND online:
  (a) the seed blog post's Lua script, fixed only enough to run (`..` concatenation,
      per-call temp keys tagged `{T}`); it keeps its one-GETBIT-per-bit loop — the
      slow baseline the design rejects;
  (b) Redis SETs: SUNIONSTORE into a tagged temp key, SINTER with online, DEL, in one
      pipelined round trip;
  (c) wsop: `wsop.acl.resolve.resolve(TenantStore(client), tenant, teams)`.
The three answers are compared before anything is timed.

A second part seeds the 10M-user dataset of the design (100 tenants × 100K users,
200 teams each, 5 teams per user, 20% online) with wsop's own seeding and reports its
Redis memory and wall time, and the same data as Redis SETs for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace

import redis
from _common import Latency, ServerInfo, machine_note, private_redis, summarize, time_calls
from _resolve_dataset import DatasetResult, bench_dataset
from _resolve_rows import (
    ONLINE_FRACTION,
    TEAM_DENSITY,
    TEAMS,
    Tenant,
    load_tenant,
    make_lua_row,
    make_sets_row,
    make_tenant,
    make_wsop_row,
    server_ms_per_call,
)
from rich.console import Console
from rich.table import Table

from wsop.acl import bitmap
from wsop.acl.store import TenantStore
from wsop.acl.synthetic import SyntheticSpec

COMMAND = ".venv/bin/python bench/resolve.py"


# Targets of issue 2.
TARGET_1M_MS = 1.0
TARGET_RATIO_1M = 500.0
TARGET_10M_MS = 5.0
TARGET_BYTES = 0.25e9  # 0.25 GB, decimal; GiB would be 268.4 MB
TARGET_SEED_S = 30.0
SETS_BUDGET_S = 60.0


@dataclass(frozen=True)
class Profile:
    """Sizes and iteration counts of one run; `--quick` shrinks everything."""

    name: str
    tenant_sizes: tuple[int, ...]
    iterations: dict[str, int]
    budget_s: dict[str, float]
    dataset: SyntheticSpec


FULL = Profile(
    name="full",
    tenant_sizes=(1_000_000, 10_000_000),
    iterations={"lua": 7, "sets": 200, "wsop": 500},
    budget_s={"lua": 20.0, "sets": 10.0, "wsop": 10.0},
    dataset=SyntheticSpec(
        tenants=100,
        users=100_000,
        teams=200,
        team_size=2_500,
        online=0.2,
        seed=2,
        tenant_prefix="ds",
    ),
)
QUICK = Profile(
    name="quick",
    tenant_sizes=(100_000, 1_000_000),
    iterations={"lua": 3, "sets": 30, "wsop": 100},
    budget_s={"lua": 2.0, "sets": 1.0, "wsop": 1.0},
    dataset=replace(FULL.dataset, tenants=10),  # same tenant shape, a tenth of the users
)


@dataclass
class Row:
    label: str
    users: int
    latency: Latency
    server_ms: float
    recipients: int
    ratio_vs_wsop: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "row": self.label,
            "users": self.users,
            **self.latency.to_json(),
            "server_ms": round(self.server_ms, 4),
            "recipients": self.recipients,
            "ratio_vs_wsop": round(self.ratio_vs_wsop, 1),
        }


# What wsop's resolve pipeline sends (see wsop/acl/pipeline.py).
WSOP_COMMANDS = ["exists", "bitop", "pexpire", "getdel", "hget"]

ROWS = {
    "lua": ("(a) seed-post Lua", make_lua_row, ["evalsha"]),
    "sets": ("(b) Redis SETs", make_sets_row, ["sunionstore", "sinter", "del"]),
    "wsop": ("(c) wsop resolve", make_wsop_row, WSOP_COMMANDS),
}


def bench_tenant(client: redis.Redis, tenant: Tenant, profile: Profile) -> list[Row]:
    """Verify that all three agree, then time each with its own iteration budget."""
    fns = {name: make(client, tenant.name) for name, (_, make, _) in ROWS.items()}
    for name, fn in fns.items():
        got = sorted(fn())
        if got != tenant.expected:
            raise AssertionError(
                f"{name} at {tenant.users:,} users returned {len(got)} recipients, "
                f"expected {len(tenant.expected)}"
            )
    rows: list[Row] = []
    for name, fn in fns.items():
        label, _, commands = ROWS[name]
        warmup = 0 if name == "lua" else 3  # the verification call already warmed Lua up
        client.config_resetstat()
        latency = time_calls(fn, profile.iterations[name], profile.budget_s[name], warmup=warmup)
        server = server_ms_per_call(client, commands, latency.n)
        rows.append(Row(label, tenant.users, latency, server, len(tenant.expected)))
    wsop_median = rows[-1].latency.median_ms
    for row in rows:
        row.ratio_vs_wsop = row.latency.median_ms / wsop_median
    return rows


# -- where wsop's time goes --------------------------------------------------------------


@dataclass
class Split:
    """Median ms of each stage of one wsop resolve, measured stage by stage."""

    users: int
    ping_ms: float
    roundtrip_ms: float
    server_ms: float
    reply_bytes: int
    decode_ms: float
    tolist_ms: float
    total_ms: float

    def to_json(self) -> dict[str, object]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in vars(self).items()}


def profile_wsop(client: redis.Redis, tenant: Tenant, iterations: int) -> Split:
    """Time resolve_raw (round trip + server), decode and tolist separately.

    Same calls as `resolve()` makes, minus name validation and the result object,
    which are microseconds; `total_ms` is the sum of the stage medians.
    """
    store = TenantStore(client)
    for _ in range(3):
        store.resolve_raw(tenant.name, TEAMS, True)
    ping = [0.0] * iterations
    raw_t = [0.0] * iterations
    dec_t = [0.0] * iterations
    list_t = [0.0] * iterations
    size = 0
    client.config_resetstat()
    for i in range(iterations):
        t0 = time.perf_counter()
        client.ping()
        t1 = time.perf_counter()
        raw = store.resolve_raw(tenant.name, TEAMS, True)
        t2 = time.perf_counter()
        ids = bitmap.decode(raw.bits)
        t3 = time.perf_counter()
        ids.tolist()
        t4 = time.perf_counter()
        ping[i], raw_t[i], dec_t[i], list_t[i] = t1 - t0, t2 - t1, t3 - t2, t4 - t3
        size = len(raw.bits)
    server = server_ms_per_call(client, WSOP_COMMANDS, iterations)
    med = [summarize(x).median_ms for x in (ping, raw_t, dec_t, list_t)]
    return Split(tenant.users, med[0], med[1], server, size, med[2], med[3], sum(med[1:]))


# -- the 10M-user dataset ----------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a (--quick)" if ok is None else ("PASS" if ok else "FAIL")


def targets(
    rows: list[Row], dataset: DatasetResult, quick: bool
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, pass?) — evaluated only at full size, where they apply."""
    by = {(r.label[:3], r.users): r for r in rows}
    out: list[tuple[str, str, bool | None]] = []
    small, large = min(r.users for r in rows), max(r.users for r in rows)
    w_small, w_large, lua_small = by[("(c)", small)], by[("(c)", large)], by[("(a)", small)]
    out.append(
        (
            f"resolve ≤ {TARGET_1M_MS:g} ms median at 1M users",
            f"{w_small.latency.median_ms:.3f} ms at {small:,}",
            None if quick else w_small.latency.median_ms <= TARGET_1M_MS,
        )
    )
    out.append(
        (
            f"≥ {TARGET_RATIO_1M:g}× faster than the seed Lua at 1M",
            f"{lua_small.ratio_vs_wsop:,.0f}×",
            None if quick else lua_small.ratio_vs_wsop >= TARGET_RATIO_1M,
        )
    )
    out.append(
        (
            f"resolve ≤ {TARGET_10M_MS:g} ms median at 10M users",
            f"{w_large.latency.median_ms:.3f} ms at {large:,}",
            None if quick else w_large.latency.median_ms <= TARGET_10M_MS,
        )
    )
    out.append(
        (
            "10M-user dataset ≤ 0.25 GB (used_memory delta)",
            f"{dataset.used_memory_bytes / 1e9:.3f} GB "
            f"({dataset.used_memory_bytes / 2**30:.3f} GiB) for {dataset.users_total:,} users",
            None if quick else dataset.used_memory_bytes <= TARGET_BYTES,
        )
    )
    out.append(
        (
            f"10M-user dataset seeded in ≤ {TARGET_SEED_S:g} s",
            f"{dataset.seed_seconds:.1f} s",
            None if quick else dataset.seed_seconds <= TARGET_SEED_S,
        )
    )
    return out


def print_report(
    console: Console,
    info: ServerInfo,
    profile: Profile,
    rows: list[Row],
    splits: list[Split],
    dataset: DatasetResult,
    checks: list[tuple[str, str, bool | None]],
) -> None:
    console.print(f"[bold]wsop resolve benchmark[/] ({profile.name})")
    console.print(f"reproduce: [cyan]{COMMAND}{' --quick' if profile.name == 'quick' else ''}[/]")
    console.print(
        f"redis-server {info.version} ({info.binary}, {info.allocator}, private, port {info.port})"
    )
    console.print(f"machine: {machine_note()}")
    console.print(
        f"workload: 3 teams of {TEAM_DENSITY:.0%} density, {ONLINE_FRACTION:.0%} online; "
        "all rows verified to return the same recipients\n"
    )

    table = Table(title="Recipients of one team message: (OR of 3 teams) AND online")
    for col in ("users", "row", "median ms", "p95 ms", "n", "server ms", "recipients", "vs wsop"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for row in rows:
        table.add_row(
            f"{row.users:,}",
            row.label,
            f"{row.latency.median_ms:,.3f}",
            f"{row.latency.p95_ms:,.3f}",
            str(row.latency.n),
            f"{row.server_ms:,.3f}",
            f"{row.recipients:,}",
            f"{row.ratio_vs_wsop:,.1f}×",
        )
    console.print(table)

    split = Table(title="Where wsop's resolve time goes (stage medians, ms)")
    for col in (
        "users",
        "PING rtt",
        "pipeline call",
        "of which server",
        "reply bytes",
        "decode",
        "tolist",
        "total",
    ):
        split.add_column(col, justify="right")
    for s in splits:
        split.add_row(
            f"{s.users:,}",
            f"{s.ping_ms:.3f}",
            f"{s.roundtrip_ms:.3f}",
            f"{s.server_ms:.3f}",
            f"{s.reply_bytes:,}",
            f"{s.decode_ms:.3f}",
            f"{s.tolist_ms:.3f}",
            f"{s.total_ms:.3f}",
        )
    console.print(split)

    d = dataset
    mem = Table(
        title=f"Dataset: {d.users_total:,} users ({d.spec['tenants']} tenants × "
        f"{d.spec['users']:,}, {d.spec['teams']} teams, team_size {d.spec['team_size']})"
    )
    for col in ("storage", "used_memory", "per user", "seed wall s", "note"):
        mem.add_column(col, justify="left" if col in ("storage", "note") else "right")
    mem.add_row(
        "bitmaps (wsop seed)",
        f"{d.used_memory_bytes / 1e6:,.1f} MB",
        f"{d.used_memory_bytes / d.users_total:,.1f} B",
        f"{d.seed_seconds:.2f}",
        f"payload {d.payload_bytes / 1e6:,.1f} MB; generation {d.generate_seconds:.2f} s; "
        f"{d.keys:,} keys",
    )
    s = d.sets
    mem.add_row(
        "Redis SETs",
        f"{s['used_memory_bytes'] / 1e6:,.1f} MB",
        f"{s['used_memory_bytes'] / d.users_total:,.1f} B",
        f"{s['seed_seconds']:.2f}",
        (f"extrapolated from {s['tenants_done']} tenants; " if s["extrapolated"] else "")
        + f"encoding {s['set_encoding']}; SADD only",
    )
    console.print(mem)
    overhead = d.team_key_memory_usage - d.team_key_strlen
    console.print(
        f"one team key: STRLEN {d.team_key_strlen:,} B, MEMORY USAGE "
        f"{d.team_key_memory_usage:,} B (+{overhead:,} B, "
        f"{overhead / max(d.team_key_strlen, 1):.1%}; allocator {info.allocator})\n"
    )

    tgt = Table(title="Targets (issue 2)")
    for col in ("target", "measured", "result"):
        tgt.add_column(col)
    for name, measured, ok in checks:
        style = "" if ok is None else ("green" if ok else "red")
        tgt.add_row(name, measured, f"[{style}]{verdict(ok)}[/]" if style else verdict(ok))
    console.print(tgt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test < 20 s")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    console = Console(stderr=args.json)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # a piped report should not wrap its tables
    started = time.perf_counter()
    with private_redis() as (client, info):
        with console.status("seeding and measuring the dataset…"):
            dataset = bench_dataset(client, profile.dataset, SETS_BUDGET_S)
        client.flushall()
        rows: list[Row] = []
        splits: list[Split] = []
        for i, users in enumerate(profile.tenant_sizes):
            with console.status(f"{users:,}-user tenant: seeding, verifying, timing…"):
                tenant = make_tenant(users, seed_value=100 + i)
                load_tenant(client, TenantStore(client), tenant)
                rows.extend(bench_tenant(client, tenant, profile))
                splits.append(profile_wsop(client, tenant, profile.iterations["wsop"] // 2))
    checks = targets(rows, dataset, quick=args.quick)
    if args.json:
        doc = {
            "command": COMMAND + (" --quick" if args.quick else ""),
            "profile": profile.name,
            "server": vars(info),
            "machine": machine_note(),
            "rows": [r.to_json() for r in rows],
            "wsop_split": [s.to_json() for s in splits],
            "dataset": dataset.to_json(),
            "targets": [{"target": t, "measured": m, "pass": ok} for t, m, ok in checks],
            "seconds": round(time.perf_counter() - started, 1),
        }
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        print_report(console, info, profile, rows, splits, dataset, checks)
        console.print(f"\n(total run {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
