"""Per-window counts: their shape, and how the master merges them. Pure.

A window is the stretch of the run between two faults (`wsop.load.chaos.windows`).
Every process keeps one dict per window (`new_window`); the master adds them up field
by field and pools the reconnect samples, which is why those are raw samples and not
percentiles (percentiles do not add up).
"""

from __future__ import annotations

import math
from typing import Any

WINDOW_FIELDS = (
    "sent", "expected", "delivered", "lost", "silent_loss", "reported_undelivered",
    "lost_disconnected", "lost_unacked", "refused", "duplicates", "cross_tenant", "reconnects",
)  # fmt: skip


def new_window() -> dict[str, Any]:
    return {**dict.fromkeys(WINDOW_FIELDS, 0), "reconnect_ms": []}


def merge_windows(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Window counts summed over processes (reconnect samples concatenated)."""
    out: list[dict[str, Any]] = []
    for snap in snapshots:
        for i, window in enumerate(snap.get("windows") or ()):
            while len(out) <= i:
                out.append(new_window())
            for name in WINDOW_FIELDS:
                out[i][name] += window.get(name, 0)
            out[i]["reconnect_ms"].extend(window.get("reconnect_ms", ()))
    return out


def merge_codes(snapshots: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for snap in snapshots:
        for code, n in (snap.get("refused_codes") or {}).items():
            out[code] = out.get(code, 0) + n
    return out


def percentiles(values: list[float], qs: tuple[float, ...] = (0.5, 0.99)) -> dict[str, Any]:
    """Nearest-rank percentiles {"p50": …, "p99": …}; None when there is no value."""
    ordered = sorted(values)
    out: dict[str, Any] = {}
    for q in qs:
        key = f"p{round(q * 100)}"
        if not ordered:
            out[key] = None
        else:
            out[key] = ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
    return out
