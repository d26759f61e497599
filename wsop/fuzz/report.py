"""What a fuzz campaign counted, and its verdict.

`Tally` is what the fuzz connections saw (frames sent, close codes, error codes, acks,
deliveries, anything a server should never send); `Report` adds the honest clients'
ledger and the stack's own findings, and `Report.problems` names every broken invariant
on one line each: no cross-tenant delivery, no masked server frame, no `internal` error,
no close code that only a crash or a vanished sidecar earns, every honest message acked
and delivered once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

UNEXPECTED_CLOSES = frozenset({1011, 1012, 1013, 1014})
"""Close codes no fuzz frame may earn while every server is up: an internal error, or a
sidecar that vanished behind the LB."""


@dataclass
class Tally:
    frames: int = 0
    bytes: int = 0
    connections: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    """Server close codes (as strings), or "none" when the connection ended without one."""
    endings: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    killers: Counter[str] = field(default_factory=Counter)
    acks: int = 0
    deliveries: int = 0
    masked: int = 0
    unknown: list[bytes] = field(default_factory=list)
    """Server frames that are neither an error, an ack nor a message."""
    cross_tenant: list[str] = field(default_factory=list)


@dataclass
class Config:
    seed: int = 6455
    frames: int = 100_000
    max_seconds: float = 60.0
    workers: int = 24
    tenants: tuple[str, ...] = ("fza", "fzb")
    honest_interval: float = 0.05
    """Seconds between an honest client's messages (8 clients: ~160 msg/s)."""


@dataclass
class Report:
    config: Config
    seconds: float
    tally: Tally
    honest: dict[str, Any]
    by_target: dict[str, dict[str, int]]
    """Per target: connections, and their mean duration in ms (upgrade to close)."""
    crashed: dict[str, int] = field(default_factory=dict)
    tracebacks: dict[str, list[str]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each server over its life, and of this process over the run."""

    def problems(self) -> list[str]:
        """Every broken invariant, one line each (empty: the run passed)."""
        out = []
        tally, honest = self.tally, self.honest
        if tally.frames < self.config.frames:
            out.append(f"only {tally.frames} frames sent (target {self.config.frames})")
        if self.crashed:
            out.append(f"server processes exited: {self.crashed}")
        if tally.refused:  # every upgrade is valid: refusing one is the stack's fault
            out.append(f"fuzz connections refused or failed: {dict(tally.refused)}")
        for name, hits in self.tracebacks.items():
            out.append(f"{len(hits)} traceback(s) in {name}'s log, first:\n{hits[0]}")
        cross = len(tally.cross_tenant) + honest["cross_tenant"]
        if cross:
            samples = tally.cross_tenant[:3] + honest["samples"]["cross_tenant"][:3]
            out.append(f"{cross} cross-tenant deliveries: {samples}")
        if tally.masked:
            out.append(f"{tally.masked} masked frames from a server (RFC 6455 §5.1)")
        if tally.unknown:
            out.append(f"{len(tally.unknown)} unexpected server frames: {tally.unknown[:3]}")
        if tally.errors.get("internal"):
            out.append(f"{tally.errors['internal']} 'internal' error frames (a server bug)")
        odd = {c: n for c, n in tally.closes.items() if c.isdigit() and int(c) in UNEXPECTED_CLOSES}
        if odd:
            out.append(f"unexpected close codes: {odd}")
        for key in ("bad_acks", "missing", "duplicates", "stray", "errors", "closed"):
            if honest[key]:
                out.append(f"honest clients: {honest[key]} {key}: {honest['samples'].get(key)}")
        if honest["acked"] < honest["sent"] or not honest["sent"]:
            out.append(f"honest clients: {honest['acked']} of {honest['sent']} messages acked")
        return out

    def as_dict(self) -> dict[str, Any]:
        tally = self.tally
        return {
            "seed": self.config.seed,
            "frames": tally.frames,
            "bytes": tally.bytes,
            "seconds": round(self.seconds, 2),
            "frames_per_s": round(tally.frames / self.seconds) if self.seconds else 0,
            "connections": tally.connections,
            "by_target": dict(self.by_target),
            "refused": dict(tally.refused),
            "closes": dict(tally.closes.most_common()),
            "endings": dict(tally.endings.most_common()),
            "errors": dict(tally.errors.most_common()),
            "killers": dict(tally.killers.most_common()),
            "acks": tally.acks,
            "deliveries_to_fuzzers": tally.deliveries,
            "cross_tenant": len(tally.cross_tenant) + self.honest["cross_tenant"],
            "honest": {k: v for k, v in self.honest.items() if k != "samples"},
            "cpu_seconds": self.cpu,
            "crashed": self.crashed,
            "tracebacks": {name: len(hits) for name, hits in self.tracebacks.items()},
            "problems": self.problems(),
            "verdict": "pass" if not self.problems() else "FAIL",
        }
