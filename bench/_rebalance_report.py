"""bench/rebalance.py's report: the targets a run is held to and the tables it prints
(split from the driver and the runner to keep each file one concern)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

EPSILON = 0.05
TARGET_AFTER = 1.05
TARGET_MOVES_RATIO = 1.1


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    led = r["ledger"]
    lost = led["lost"]
    ratio = r["moves_over_minimum"]
    # ≤ 1 + ε, or what whole connections allow: ⌈(1+ε)·mean⌉ / mean (300 clients on 4
    # sidecars: 79 / 75 = 1.0533 is the best any placement can promise)
    loads = list(r["loads_after"].values())
    mean = sum(loads) / len(loads) if loads else 0.0
    limit = max(TARGET_AFTER, r["capacity"] / mean) if mean else TARGET_AFTER
    return [
        (
            f"after ≤ {limit:.4g} (CLI's, and observed)",
            f"{r['after']:.4f}, {r['observed_after']:.4f}",
            max(r["after"], r["observed_after"]) <= limit + 1e-9,
        ),
        (
            f"moves ≤ {TARGET_MOVES_RATIO}× minimum",
            "—"
            if ratio is None
            else f"{r['moved_connections']:,} / {r['minimum']['not_on_target']:,} = {ratio:.3f}",
            ratio is not None and ratio <= TARGET_MOVES_RATIO,
        ),
        ("0 lost", f"{lost:,} of {led['sent']:,}", lost == 0),
        (
            "0 duplicated / misrouted / errors / closed",
            f"{led['duplicated']} / {led['misrouted']} / {led['error_frames']} / "
            f"{led['closed_clients']}",
            not (
                led["duplicated"]
                or led["misrouted"]
                or led["error_frames"]
                or led["closed_clients"]
            ),
        ),  # fmt: skip
        (
            "every client on its target, nothing left to move",
            f"off target {r['off_target_at_end']}, second dry run {r['second_dry_run_moves']}",
            r["off_target_at_end"] == 0 and r["second_dry_run_moves"] == 0,
        ),
    ]


def _num(v: float | None, fmt: str, missing: str = "—") -> str:
    return missing if v is None else format(v, fmt)


def print_report(console: Console, doc: dict[str, Any]) -> None:
    console.print(f"[bold]wsop rebalance benchmark[/] ({doc['profile']})")
    console.print(f"reproduce: [cyan]{doc['command']}[/]")
    console.print(f"machine: {doc['machine']} (driver, LB, sidecars and Redis share it)")
    console.print(f"code: {doc['code']}")
    console.print(
        f"RLIMIT_NOFILE soft/hard: {doc['fd_limit'][0]:,}/{doc['fd_limit'][1]:,} "
        f"(inherited by the stack: {doc['runs'][0]['fd_limits']})"
    )
    console.print(
        f"{doc['connections']:,} clients through the LB, 3 sidecars → scale to 4 → rebalance "
        f"ε {EPSILON}; {doc['msg_rate']:.0f} direct msg/s throughout\n"
    )
    t = Table(title="Rebalance (one fresh stack per rate)")
    t.add_column("measure")
    for r in doc["runs"]:
        t.add_column(f"--rate {r['rate']:g}", justify="right")

    def row(label: str, fmt: Any) -> None:
        t.add_row(label, *[fmt(r) for r in doc["runs"]])

    row("open N clients (s)", lambda r: f"{r['open_s']:.1f}")
    row("LB fds with N open", lambda r: f"{r['lb_fds_open']:,}")
    row("max/mean before → after", lambda r: f"{r['before']:.4f} → {r['after']:.4f}")
    row("  after, observed", lambda r: f"{r['observed_after']:.4f}")
    row("loads before", lambda r: " ".join(str(v) for v in r["loads_before"].values()))
    row("loads after (planned)", lambda r: " ".join(str(v) for v in r["loads_after"].values()))
    row("capacity ⌈(1+ε)·mean⌉", lambda r: str(r["capacity"]))
    row("minimum: not on target", lambda r: f"{r['minimum']['not_on_target']:,}")
    row("  … not on ring owner", lambda r: f"{r['minimum']['not_on_owner']:,}")
    row("  … Σ over capacity", lambda r: f"{r['minimum']['over_capacity']:,}")
    row(
        "moved (CLI) / observed",
        lambda r: f"{r['moved_connections']:,} / {r['observed']:,}",
    )
    row("moves ÷ minimum", lambda r: f"{r['moves_over_minimum']:.3f}")
    row("dry run = real plan", lambda r: "yes" if r["plan_identical"] else "NO")
    row("move errors", lambda r: str(r["error_count"]))
    row("dry run wall (s)", lambda r: f"{r['dry_run_s']:.2f}")
    row("rebalance wall (s)", lambda r: f"{r['rebalance_s']:.2f}")
    row("  achieved moves/s", lambda r: f"{r['achieved_rate']:.0f}")
    row("  wall per move (ms)", lambda r: f"{r['per_move_ms']:.2f}")
    row("  minus dry run: executing (s)", lambda r: f"{r['execute_s']:.2f}")
    row("  executing per move (ms)", lambda r: _num(r["execute_per_move_ms"], ".2f"))
    row(
        "until all settled (s)",
        lambda r: "timeout" if r["settled_s"] is None else f"{r['settled_s']:.2f}",
    )
    row("sent / received", lambda r: f"{r['ledger']['sent']:,} / {r['ledger']['received']:,}")
    row("lost / duplicated", lambda r: f"{r['ledger']['lost']} / {r['ledger']['duplicated']}")
    row("acks delivered:0", lambda r: str(r["ledger"]["acks_delivered_0"]))
    row("  … but delivered", lambda r: str(r["ledger"]["acks_delivered_0_but_delivered"]))
    row("  … to a closed client", lambda r: str(r["ledger"]["lost_recipient_already_closed"]))
    row("clients closed", lambda r: str(r["ledger"]["closed_clients"]))
    row("LB upstream failures", lambda r: str(r["lb_upstream_failures"] or 0))
    console.print(t)

    c = Table(title="CPU-seconds from rebalance start until settled (extra = over the baseline)")
    for col in (
        "rate",
        "window s",
        "process",
        "CPU-s",
        "extra CPU-s",
        "extra µs/move",
        "baseline cores",
    ):
        c.add_column(col, justify="left" if col == "process" else "right")
    for r in doc["runs"]:
        cpu, extra = r["cpu_until_settled"], r["cpu_extra_over_baseline"]
        for name in cpu:
            per = extra[name] / r["moved"] * 1e6 if r["moved"] else 0.0
            c.add_row(
                f"{r['rate']:g}", f"{r['until_settled_wall_s']:.1f}", name, f"{cpu[name]:.2f}",
                f"{extra[name]:.2f}", f"{per:,.0f}", f"{r['baseline_cores'].get(name, 0.0):.2f}",
            )  # fmt: skip
    console.print(c)
    for r in doc["runs"]:
        led = r["ledger"]
        for key in ("lost_examples", "ack_zero_examples", "error_examples", "closed_examples"):
            if led[key]:
                console.print(f"[red]{key}[/] (rate {r['rate']:g}): {led[key]}")
        if r["errors"]:
            console.print(f"[red]move errors[/] (rate {r['rate']:g}): {r['errors']}")
    tgt = Table(title="Targets")
    for col in ("rate", "target", "measured", "verdict"):
        tgt.add_column(col)
    for r in doc["runs"]:
        for name, measured, ok in targets(r):
            tgt.add_row(
                f"{r['rate']:g}", name, measured, "[green]pass[/]" if ok else "[red]FAIL[/]"
            )
    console.print(tgt)
