"""From the master's results document to the summary users see, the verdict and a plot.

CLI side (no gevent). `summary` is the one result object: the rich table and `--json`
both read it, and `verdict` decides the exit code from it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUMMARY_KEYS = (
    "profile", "target_rate", "sent", "expected_deliveries", "delivered", "lost",
    "duplicates", "msgs_per_s", "deliveries_per_s", "latency_ms",
)  # fmt: skip


def summary(results: dict[str, Any], target: str) -> dict[str, Any]:
    """The DESIGN.md keys first, then the side counts that explain them."""
    plan, c = results["plan"], results["counters"]
    run_s = results["run_s"] or 0.0
    planned = results["planned_messages"]
    return {
        "profile": plan["profile"],
        "target_rate": plan["rate"],
        "sent": c["sent"],
        "expected_deliveries": c["expected"],
        "delivered": c["delivered"],
        "lost": c["lost"],
        "duplicates": c["duplicates"],
        "msgs_per_s": round(c["sent"] / run_s, 1) if run_s else 0.0,
        "deliveries_per_s": round(c["delivered"] / run_s, 1) if run_s else 0.0,
        "latency_ms": results["latency_ms"],
        "target": target,
        "connections": plan["connections"],
        "ready": c["ready"],
        "workers": results["workers"],
        "duration_s": run_s,
        "planned_messages": planned,
        "rate_ratio": round(c["sent"] / planned, 4) if planned else 0.0,
        "direct": c["direct"],
        "team": c["team"],
        "surplus": c["surplus"],
        "late": c["late"],
        "unexpected": c["unexpected"],
        "errors": c["errors"],
        "send_failed": c["send_failed"],
        "acks_missing": c["acks_missing"],
        "ack_undelivered": c["ack_undelivered"],
        "ack_mismatch": c["ack_mismatch"],
        "disconnects": c["disconnects"],
        "reconnects": c["reconnects"],
        "workers_settled": results["finals"],
    }


def verdict(result: dict[str, Any], allow_loss: bool, min_rate_ratio: float) -> list[str]:
    """Why the run failed (empty list: it passed)."""
    reasons: list[str] = []
    if result["lost"] and not allow_loss:
        share = result["lost"] / max(1, result["expected_deliveries"])
        reasons.append(
            f"{result['lost']} of {result['expected_deliveries']} deliveries lost ({share:.2%})"
        )
    if result["rate_ratio"] < min_rate_ratio:
        reasons.append(
            f"achieved {result['sent']} of {result['planned_messages']} planned messages "
            f"({result['rate_ratio']:.1%} < {min_rate_ratio:.0%}; {result['msgs_per_s']} msg/s "
            f"for a {result['target_rate']:g} msg/s target)"
        )
    if result["workers_settled"] < result["workers"]:
        reasons.append(
            f"only {result['workers_settled']} of {result['workers']} workers reported final counts"
        )
    return reasons


def plot(results: dict[str, Any], path: Path) -> Path:
    """Rate (sent vs target) and latency (p50/p95/p99, rolling) over time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results.get("timeline", [])
    t = [p["t"] for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(t, [p["msgs_per_s"] for p in points], label="sent msg/s")
    top.plot(t, [p["target_rate"] for p in points], "--", label="target msg/s")
    top.set_ylabel("msg/s")
    top.legend(loc="upper left")
    top.set_title(f"wsop loadtest — {results['plan']['profile']}")
    for key in ("p50", "p95", "p99"):
        bottom.plot(t, [p.get(key) or 0 for p in points], label=f"{key} ms")
    bottom.set_ylabel("delivery latency (ms)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
