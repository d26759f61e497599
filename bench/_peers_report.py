"""What bench/peers.py derives and prints: per-row figures pooled over the ABBA phases,
the wsop ÷ Socket.IO+HAProxy ratios, and issue 17's goals next to them."""

from __future__ import annotations

from typing import Any

from _common import percentile_ms

GOALS = {
    "team max: CPU per delivery": "≤ 1.0× (wsop's CPU per delivery, LB included)",
    "team max: deliveries/s": "≥ 1.0× (team deliveries/s at max rate)",
    "direct max: CPU per message": "≤ 0.8×",
    "relay: LB ÷ HAProxy CPU per relayed message": "≤ 1.1×",
    "idle: KB per connection": "≤ 0.5×",
}
"""Issue 17's goals for the multiplexed trunks, by ratio name."""

_LIMITS = {
    "team max: CPU per delivery": ("≤", 1.0),
    "team max: deliveries/s": ("≥", 1.0),
    "direct max: CPU per message": ("≤", 0.8),
    "relay: LB ÷ HAProxy CPU per relayed message": ("≤", 1.1),
    "idle: KB per connection": ("≤", 0.5),
}

_ROW_RATIOS = (
    ("direct fixed: CPU per message", "direct fixed", "server_us_per_msg"),
    ("direct max: CPU per message", "direct max", "server_us_per_msg"),
    ("direct max: deliveries/s", "direct max", "deliveries_per_s"),
    ("team fixed: CPU per delivery", "team fixed", "server_us_per_delivery"),
    ("team max: CPU per delivery", "team max", "server_us_per_delivery"),
    ("team max: deliveries/s", "team max", "deliveries_per_s"),
)
RATIO_NAMES = [name for name, _, _ in _ROW_RATIOS] + [
    "idle: KB per connection",
    "relay: LB ÷ HAProxy CPU per relayed message",
]
"""Every ratio a run reports, in order (the test checks that each one is there)."""


def _settings(label: str, p: Any) -> str:
    if label.startswith("team"):
        load = f"{p.rate:g} msg/s" if "fixed" in label else f"window {p.team_window}"
        return f"{p.team_senders} senders → team of 50, {load}"
    load = f"{p.rate:g} msg/s" if "fixed" in label else f"window {p.direct_window}"
    return f"{p.direct_users} users, {load}"


def row_summary(
    label: str,
    system: str,
    runs: list[dict[str, Any]],
    servers: list[str],
    p: Any,
    crossing: float | None,
) -> dict[str, Any]:
    """One (workload, system) row: counts and CPU summed over its phases, latency pooled."""
    msgs = sum(r["msgs"] for r in runs)
    deliveries = sum(r["deliveries"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    names = list(runs[0]["cpu_s"])
    cpu = {n: sum(r["cpu_s"][n] for r in runs) for n in names}
    kernel = {n: sum(r["kernel_s"][n] for r in runs) for n in names}
    stat_cpu = {n: sum(r["stat_cpu_s"][n] for r in runs) for n in names}
    syscalls = {n: sum(r["syscalls"][n] for r in runs) for n in names}
    busy = sum(r["machine_busy_s"] for r in runs)
    server_cpu = sum(cpu[n] for n in servers)
    delivery_ns = [x for r in runs for x in r["delivery_ns"]]
    ack_ns = [x for r in runs for x in r["ack_ns"]]
    return {
        "workload": label,
        "system": system,
        "settings": _settings(label, p),
        "phases": len(runs),
        "seconds": round(wall, 2),
        "msgs": msgs,
        "deliveries": deliveries,
        "msgs_per_s": msgs / wall,
        "deliveries_per_s": deliveries / wall,
        "server_cpu_s": round(server_cpu, 4),
        "server_us_per_msg": server_cpu / msgs * 1e6 if msgs else None,
        "server_us_per_delivery": server_cpu / deliveries * 1e6 if deliveries else None,
        "us_per_msg": {n: cpu[n] / msgs * 1e6 if msgs else None for n in servers},
        "syscalls_per_delivery": {
            n: syscalls[n] / deliveries if deliveries else None for n in servers
        },
        "kernel_share": (
            sum(kernel[n] for n in servers) / sum(stat_cpu[n] for n in servers)
            if sum(stat_cpu[n] for n in servers)
            else None
        ),
        "latency_ms": {q: percentile_ms(delivery_ns, n) for q, n in (("p50", 50), ("p99", 99))},
        "ack_latency_ms": {q: percentile_ms(ack_ns, n) for q, n in (("p50", 50), ("p99", 99))},
        "cores": {
            "servers": round(server_cpu / wall, 2),
            "driver": round(cpu.get("driver", 0.0) / wall, 2),
            "others": round(max(0.0, busy - sum(cpu.values())) / wall, 2),
        },
        "cross_fraction": crossing,
    }


IDLE_NOT_MEASURED = "not measured: a system's RSS fell while its connections opened"
"""(Seen with --quick on a busy machine: node's heap shrank by more than 1,000 idle
connections took. The full run's 5,000 connections have not shown it.)"""


def _row(rows: list[dict[str, Any]], workload: str, system: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["workload"] == workload and r["system"] == system), None)


def _ratio(
    name: str, wsop: float | None, peer: float | None, unit: str, suffix: str = ""
) -> dict[str, Any]:
    ratio = wsop / peer if wsop is not None and peer else None
    out: dict[str, Any] = {"name": name + suffix, "wsop": wsop, "peer": peer, "unit": unit,
                           "ratio": ratio}  # fmt: skip
    limit = _LIMITS.get(name)
    if limit is not None:
        op, bound = limit
        out["goal"] = f"{op} {bound}"
        met = None if ratio is None else ratio <= bound if op == "≤" else ratio >= bound
        out["goal_met"] = met
    return out


def ratios(
    rows: list[dict[str, Any]], idle: dict[str, Any], variants: list[str] | tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """wsop ÷ Socket.IO+HAProxy for each row's headline figure; wsop's LB ÷ HAProxy for
    the relay (the balancer's own CPU per message, same sidecars behind both). Then the
    same for every extra LB of `--lb-args` (`variants`), named with a ` [system]`
    suffix. Rows a `--workloads` subset left out have no ratio."""
    out = []
    for system in ("wsop", *variants):
        suffix = "" if system == "wsop" else f" [{system}]"
        for name, workload, key in _ROW_RATIOS:
            unit = "deliveries/s" if key == "deliveries_per_s" else "µs"
            w, s = _row(rows, workload, system), _row(rows, workload, "socket.io")
            if w is not None and s is not None:
                out.append(_ratio(name, w[key], s[key], unit, suffix))
        if system in idle and "socket.io" in idle:
            kb = {k: v["total_bytes_per_conn"] / 1024 for k, v in idle.items()}
            name = "idle: KB per connection"
            idle_ratio = _ratio(name, kb[system], kb["socket.io"], "KB", suffix)
            if min(kb[system], kb["socket.io"]) <= 0:  # a runtime gave memory back mid-row
                idle_ratio.update(ratio=None, goal_met=None, note=IDLE_NOT_MEASURED)
            out.append(idle_ratio)
        lb, hap = _row(rows, "relay", system), _row(rows, "relay", "haproxy relay")
        if lb is not None and hap is not None:
            name = "relay: LB ÷ HAProxy CPU per relayed message"
            out.append(_ratio(name, lb["us_per_msg"]["lb"], hap["us_per_msg"]["haproxy"], "µs",
                              suffix))  # fmt: skip
    return out


# --- printing -------------------------------------------------------------------------


def _f(v: float | None, fmt: str = ",.1f") -> str:
    return "—" if v is None else format(v, fmt)


def print_report(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 170)
    console.print(f"[bold]wsop vs Socket.IO 4 + HAProxy[/] ({doc['profile']})")
    console.print(f"reproduce: [cyan]{doc['command']}[/]")
    console.print(f"machine: {doc['machine']}; {doc['versions']}")
    console.print(
        "server CPU = run time of every server process (/proc/<pid>/task/*/schedstat): wsop = "
        "LB + 2 sidecars + Redis; socket.io = HAProxy + 2 node + Redis; haproxy relay = "
        "HAProxy + wsop's 2 sidecars + Redis. Latency: send → receive at the recipient.\n"
    )
    t = Table(title="Rows (each = its phases of the ABBA order, summed)")
    for col in ("workload", "system", "load", "msgs/s", "deliv/s", "µs/msg", "µs/deliv",
                "per process µs/msg", "sysc/deliv", "kernel", "p50 / p99 ms",
                "cores srv/drv/oth"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("workload", "system", "load") else "right")
    for r in doc["rows"]:
        per = " ".join(f"{k} {_f(v)}" for k, v in r["us_per_msg"].items())
        sysc = sum(v or 0 for v in r["syscalls_per_delivery"].values())
        c = r["cores"]
        t.add_row(
            r["workload"], r["system"], r["settings"], _f(r["msgs_per_s"], ",.0f"),
            _f(r["deliveries_per_s"], ",.0f"), _f(r["server_us_per_msg"]),
            _f(r["server_us_per_delivery"]), per, f"{sysc:.1f}", _f(r["kernel_share"], ".0%"),
            f"{_f(r['latency_ms']['p50'], '.2f')} / {_f(r['latency_ms']['p99'], '.2f')}",
            f"{c['servers']:.2f}/{c['driver']:.2f}/{c['others']:.2f}",
        )  # fmt: skip
    console.print(t)
    for name, idle in doc["idle"].items():
        per = ", ".join(f"{k} {v / 1024:,.1f}" for k, v in idle["bytes_per_conn"].items())
        console.print(
            f"idle {name}: {idle['connections']:,} connections in {idle['open_seconds']} s, "
            f"{idle['total_bytes_per_conn'] / 1024:,.1f} KB each ({per})"
        )
    r = Table(title="wsop ÷ Socket.IO+HAProxy (relay: wsop's LB ÷ HAProxy), goals of issue 17")
    for col in ("ratio", "wsop", "peer", "wsop ÷ peer", "goal", "met"):
        r.add_column(col, justify="left" if col in ("ratio", "goal") else "right")
    for x in doc["ratios"]:
        met = x.get("goal_met")
        r.add_row(
            x["name"], f"{_f(x['wsop'], ',.1f')} {x['unit']}", f"{_f(x['peer'], ',.1f')}",
            f"{_f(x['ratio'], '.2f')}×", x.get("goal", ""),
            "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"),
        )  # fmt: skip
    console.print(r)
    for name, led in doc["ledgers"].items():
        done = doc["completeness"][name]
        console.print(f"ledger {name}: {_f(None if done is None else done * 100, '.3f')}% of the "
                      f"deliveries arrived; {led}")  # fmt: skip
    console.print(f"(total run {doc['seconds']} s)")
