"""Ring placement benchmark: balance, movement on scale up/down, lookup cost.

    .venv/bin/python bench/ring.py                   # 1M keys, 10 and 50 members
    .venv/bin/python bench/ring.py --keys 100000 --json

Per algorithm and fleet size N (members ws-0..ws-{N-1}):
  max/mean   largest load over the mean, over all keys (balance)
  +1, -1     keys moved going N → N+1 (ws-N appended) and N → N−1 (the last removed),
             as a multiple of the ideal 1/(N+1) and 1/N
  -mid       the same for removing ws-1 (a middle member: jump's weak spot)
  build      time to construct the placement from the membership
  single     median µs of one owner((tenant, user)) call, encoding included
  batch      ns per key of the vectorised path (hashing included)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from wsop.ring import BoundedLoads, Membership, Placement, build  # noqa: E402
from wsop.ring.analysis import diff_report, load_report, place  # noqa: E402
from wsop.ring.keys import synthetic_keys  # noqa: E402
from wsop.ring.registry import DEFAULT_ALGORITHM  # noqa: E402

ALGORITHMS = ["rendezvous", "maglev", "ring", "jump", "bounded"]
BOUNDED_OPTS = {"base": DEFAULT_ALGORITHM, "epsilon": 0.02}
TARGETS = {"max_over_mean": 1.02, "moved_x_ideal": 1.1, "single_us": 2.0}


def fleet(count: int, skip: int | None = None) -> Membership:
    return Membership.of([f"ws-{i}" for i in range(count) if i != skip])


def single_lookup_us(placement: Placement, rounds: int = 31, calls: int = 2000) -> float:
    """Median over `rounds` of the mean cost of `calls` owner() calls on distinct keys."""
    keys = [("t0", user) for user in range(calls)]
    owner = placement.owner
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for key in keys:
            owner(key)
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def measure(algo: str, count: int, encoded: list[bytes]) -> dict[str, Any]:
    opts = BOUNDED_OPTS if algo == "bounded" else {}
    base = fleet(count)
    start = time.perf_counter()
    built = build(algo, base, **opts)
    build_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    owners = (
        built.assign_indices(encoded) if isinstance(built, BoundedLoads) else built.indices(encoded)
    )
    batch_ns = (time.perf_counter() - start) / len(encoded) * 1e9
    row: dict[str, Any] = {
        "algo": algo,
        "members": count,
        "keys": len(encoded),
        "max_over_mean": load_report(algo, base, owners).max_over_mean,
    }
    for label, after in (
        ("up", fleet(count + 1)),
        ("down", fleet(count - 1)),
        ("mid", fleet(count, 1)),
    ):
        report = diff_report(algo, base, after, owners, place(algo, after, encoded, **opts))
        row[f"moved_{label}_x_ideal"] = round(report.moved_fraction / report.ideal_fraction, 3)
    row["build_ms"] = round(build_ms, 1)
    row["single_us"] = (
        None if isinstance(built, BoundedLoads) else round(single_lookup_us(built), 3)
    )
    row["batch_ns_per_key"] = round(batch_ns, 1)
    return row


def render(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(
        title=f"Ring placement ({rows[0]['keys']:,} keys; targets: max/mean ≤ "
        f"{TARGETS['max_over_mean']}, moved ≤ {TARGETS['moved_x_ideal']}× ideal, "
        f"single ≤ {TARGETS['single_us']} µs)"
    )
    for column in (
        "algo",
        "N",
        "max/mean",
        "+1 ×ideal",
        "−1 ×ideal",
        "−mid ×ideal",
        "build ms",
        "single µs",
        "batch ns/key",
    ):
        table.add_column(column, justify="left" if column == "algo" else "right")
    for row in rows:
        single = row["single_us"]
        table.add_row(
            row["algo"] + (" (default)" if row["algo"] == DEFAULT_ALGORITHM else ""),
            str(row["members"]),
            f"{row['max_over_mean']:.4f}",
            f"{row['moved_up_x_ideal']:.3f}",
            f"{row['moved_down_x_ideal']:.3f}",
            f"{row['moved_mid_x_ideal']:.3f}",
            f"{row['build_ms']:.1f}",
            "—" if single is None else f"{single:.2f}",
            f"{row['batch_ns_per_key']:.0f}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to place (default 1M)")
    parser.add_argument("--members", default="10,50", help="fleet sizes, comma-separated")
    parser.add_argument("--algo", default=",".join(ALGORITHMS), help="algorithms, comma-separated")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    encoded = synthetic_keys(args.keys)
    console = Console(stderr=args.json, width=max(Console().width, 120))
    rows = []
    for count in (int(n) for n in args.members.split(",")):
        for algo in args.algo.split(","):
            console.log(f"{algo} N={count}")
            rows.append(measure(algo, count, encoded))
    if args.json:
        print(
            json.dumps(
                {"bench": "ring", "default": DEFAULT_ALGORITHM, "targets": TARGETS, "rows": rows}
            )
        )
    else:
        render(rows, console)


if __name__ == "__main__":
    main()
