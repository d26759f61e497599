"""The ledger's tallies: the loss classes of a settled message, the run's counters and
the per-window counts, and how the master adds up those of every process. Pure.

A window is the stretch of the run between two faults (`wsop.load.chaos.windows`).
Every process keeps one dict per window (`new_window`); the master adds them up field
by field and pools the reconnect samples, which is why those are raw samples and not
percentiles (percentiles do not add up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Counters:
    """Cumulative counts; the master sums workers' latest snapshots field by field."""

    sent: int = 0
    direct: int = 0
    team: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    lost_disconnected: int = 0
    lost_unacked: int = 0
    reported_undelivered: int = 0
    silent_loss: int = 0
    refused: int = 0
    duplicates: int = 0
    cross_tenant: int = 0
    surplus: int = 0
    late: int = 0
    silent_late: int = 0
    recovered_messages: int = 0  # deliveries that came as a `?since=` replay
    recovered_late: int = 0  # of them: after settling, turned a counted loss into a delivery
    recovered_duplicates: int = 0  # replayed deliveries the user had already received
    live_after_replay: int = 0  # live deliveries of a message the replay had delivered
    recovery_ok: int = 0
    recovery_failed: int = 0
    unexpected: int = 0
    pending: int = 0
    acks: int = 0
    acks_missing: int = 0
    ack_undelivered: int = 0
    ack_mismatch: int = 0
    errors: int = 0
    send_failed: int = 0
    disconnects: int = 0
    reconnects: int = 0
    not_back: int = 0
    connect_failures: int = 0
    ready: int = 0
    first_send: float = 0.0
    last_send: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def total(cls, snapshots: list[dict[str, Any]]) -> Counters:
        """Sum of snapshots (times: earliest first send, latest last send)."""
        out = cls()
        for snap in snapshots:
            for f in fields(cls):
                value = snap.get(f.name, 0) or 0
                if f.name == "first_send":
                    if value and (not out.first_send or value < out.first_send):
                        out.first_send = value
                elif f.name == "last_send":
                    out.last_send = max(out.last_send, value)
                else:
                    setattr(out, f.name, getattr(out, f.name) + value)
        return out


WINDOW_FIELDS = (
    "sent", "expected", "delivered", "lost", "silent_loss", "reported_undelivered",
    "lost_disconnected", "lost_unacked", "refused", "duplicates", "cross_tenant", "reconnects",
    "late", "silent_late", "recovered_messages", "recovered_late", "recovered_duplicates",
    "live_after_replay", "recovery_ok", "recovery_failed",
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


def merge_codes(snapshots: list[dict[str, Any]], key: str = "refused_codes") -> dict[str, int]:
    """Tallies by name (`refused_codes`, `connect_errors`) summed over processes."""
    out: dict[str, int] = {}
    for snap in snapshots:
        for code, n in (snap.get(key) or {}).items():
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


LOSS_CLASSES = ("lost_disconnected", "lost_unacked", "reported_undelivered", "silent_loss")


@dataclass(frozen=True)
class Classes:
    """Where the expected deliveries of one settled message went (they sum to expected)."""

    delivered: int = 0
    lost_disconnected: int = 0
    lost_unacked: int = 0
    reported_undelivered: int = 0
    silent_loss: int = 0


def classify(
    expected: int,
    arrived: int,
    disconnected: int,
    ack_undelivered: int | None,
    sender_dropped: bool,
) -> Classes:
    """Classify one message's expected deliveries (see `wsop.load.ledger`).

    `arrived`: expected recipients that got it; `disconnected`: lost recipients whose
    connection dropped around it; `ack_undelivered`: the ack's count, None without ack.
    """
    lost = expected - arrived
    gone = min(disconnected, lost)
    rest = lost - gone
    if not rest:
        return Classes(arrived, gone)
    if ack_undelivered is None:
        if sender_dropped:
            return Classes(arrived, gone, lost_unacked=rest)
        return Classes(arrived, gone, silent_loss=rest)
    reported = min(rest, max(0, ack_undelivered - gone))
    return Classes(arrived, gone, reported_undelivered=reported, silent_loss=rest - reported)
