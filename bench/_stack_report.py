"""bench/stack.py's verdict and its tables: the targets checked, the report printed."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

TARGET_MSGS_PER_CPU_S = 30_000
TARGET_LB_SHARE = 0.20
TARGET_BYTES_PER_CONN = 20 * 1024


def targets(rows: list[dict[str, Any]], idle: dict[str, Any]) -> list[tuple[str, str, bool]]:
    direct = next(r for r in rows if r["row"].startswith("(b)"))
    team = next(r for r in rows if r["row"].startswith("(c)"))
    out = [
        (
            f"(b) ≥ {TARGET_MSGS_PER_CPU_S:,} msgs per sidecar CPU-s",
            f"{direct['msgs_per_server_cpu_s']:,.0f}",
            direct["msgs_per_server_cpu_s"] >= TARGET_MSGS_PER_CPU_S,
        ),
        (
            f"(c) ≥ {TARGET_MSGS_PER_CPU_S:,} deliveries per sidecar CPU-s",
            f"{team['deliveries_per_server_cpu_s']:,.0f}",
            team["deliveries_per_server_cpu_s"] >= TARGET_MSGS_PER_CPU_S,
        ),
    ]
    for r in (direct, team):
        out.append(
            (
                f"{r['row'][:3]} LB CPU ≤ {TARGET_LB_SHARE:.0%} of sidecars' per message",
                f"{r['lb_share_of_sidecars']:.0%}",
                r["lb_share_of_sidecars"] <= TARGET_LB_SHARE,
            )
        )
    out.append(
        (
            f"≤ {TARGET_BYTES_PER_CONN // 1024} KB (LB + sidecars) per idle connection",
            f"{idle['total_bytes_per_conn'] / 1024:,.1f} KB at {idle['connections']:,}",
            idle["total_bytes_per_conn"] <= TARGET_BYTES_PER_CONN,
        )
    )
    for r in rows:
        lost = r["ledger"]["lost"] + r["ledger"]["unacked"] + r["ledger"]["errors"]
        out.append((f"{r['row'][:3]} nothing lost, no errors", str(lost), lost == 0))
    return out


def _ms(pair: dict[str, float | None]) -> str:
    return " / ".join("—" if v is None else f"{v:.2f}" for v in pair.values())


def _num(v: float | None, fmt: str = ",.0f") -> str:
    return "—" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def print_report(console: Console, doc: dict[str, Any]) -> None:
    console.print(f"[bold]wsop stack benchmark[/] ({doc['profile']})")
    console.print(f"reproduce: [cyan]{doc['command']}[/]")
    console.print(f"machine: {doc['machine']} (driver, LB, sidecars and Redis share it)")
    console.print(
        "latency: send → receive at the recipient (one clock: the driver holds both ends); "
        "ack = send → ack at the sender; 'unloaded' = one sender, 1 in flight\n"
    )
    t = Table(title="Throughput and latency (p50 / p99 ms)")
    for col in ("row", "load", "msgs/s", "deliv/s", "loaded", "ack loaded", "unloaded",
                "ack unloaded"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("row", "load") else "right")
    for r in doc["rows"]:
        t.add_row(
            r["row"], r["settings"], _num(r["msgs_per_s"]), _num(r["deliveries_per_s"]),
            _ms(r["latency_loaded_ms"]), _ms(r["ack_latency_loaded_ms"]),
            _ms(r["latency_unloaded_ms"]), _ms(r["ack_latency_unloaded_ms"]),
        )  # fmt: skip
    console.print(t)
    c = Table(title="CPU per message (server = echo process for (a), both sidecars for (b)/(c))")
    for col in ("row", "server µs/msg", "msgs/server CPU-s", "deliv/server CPU-s",
                "LB µs/msg", "LB % of sidecars", "Redis µs/msg", "syscalls/msg server, LB",
                "kernel % server, LB", "cores used"):  # fmt: skip
        c.add_column(col, justify="left" if col in ("row", "cores used") else "right")
    for r in doc["rows"]:
        share = r["lb_share_of_sidecars"]
        c.add_row(
            r["row"], _num(r["server_us_per_msg"], ".1f"), _num(r["msgs_per_server_cpu_s"]),
            _num(r["deliveries_per_server_cpu_s"]), _num(r["lb_us_per_msg"], ".1f"),
            "—" if share is None else f"{share:.0%}", _num(r["redis_us_per_msg"], ".1f"),
            f"{_num(r['server_syscalls_per_msg'], '.1f')}, {_num(r['lb_syscalls_per_msg'], '.1f')}",
            f"{_pct(r['server_kernel_share'])}, {_pct(r['lb_kernel_share'])}",
            " ".join(f"{k} {v:.2f}" for k, v in r["cores_used"].items()),
        )  # fmt: skip
    console.print(c)
    idle = doc["idle"]
    per = ", ".join(f"{k} {v / 1024:,.1f} KB" for k, v in idle["bytes_per_conn"].items())
    console.print(
        f"idle connections: {idle['connections']:,} opened via the LB in "
        f"{idle['open_seconds']} s; RSS per connection {idle['total_bytes_per_conn'] / 1024:,.1f}"
        f" KB ({per}); the bare echo server: "
        f"{doc['rows'][0]['idle_bytes_per_conn'] / 1024:,.1f} KB per connection"
    )
    for r in doc["rows"]:
        console.print(f"ledger {r['row'][:3]}: {r['ledger']}")
    tgt = Table(title="Targets")
    for col in ("target", "measured", "verdict"):
        tgt.add_column(col)
    for name, measured, ok in doc["targets_tuples"]:
        tgt.add_row(name, measured, "[green]pass[/]" if ok else "[red]FAIL[/]")
    console.print(tgt)
