"""The master's side of a run: the stage table as a LoadTestShape, live status, results.

gevent world (runs inside the locust master, or the single local process). The shape
asks locust for one user per worker (the `WsopPool` that drives all of that worker's
connections), waits until the workers report every connection up (`wsop_spawned`),
and walks the plan's stages by sending the per-user rate to every worker (`wsop_rate`);
after the last stage it keeps everyone connected for the grace period (the drain), asks
the workers to settle their books (`wsop_finish`) and stops once each has answered
(`wsop_final`).

Phases: connect → run (stage by stage) → drain → finish. Once a second the tick writes
a small status file the CLI tails for its live view, and keeps a timeline for the plot.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import LoadTestShape
from locust.stats import StatsEntry

from wsop.load.ledger import Counters
from wsop.load.profiles import LoadPlan
from wsop.load.tallies import merge_codes, merge_windows

CONNECT_SETTLE_S = 2.0
FINISH_TIMEOUT_S = 20.0


class Book:
    """Counters as the master sees them: the latest cumulative snapshot of each worker."""

    def __init__(self) -> None:
        self.live: dict[str, dict[str, Any]] = {}
        self.finals: dict[str, dict[str, Any]] = {}
        self.spawned: dict[str, int] = {}  # connections up (or given up on), by worker
        self.local_snapshot: Any = None  # a callable in local mode

    def snapshots(self, final: bool = False) -> list[dict[str, Any]]:
        """Each process's latest snapshot (only the settled ones if `final` and any)."""
        if self.local_snapshot is not None and not self.finals:
            return [self.local_snapshot()]
        if final and self.finals:
            return list(self.finals.values())
        return list({**self.live, **self.finals}.values())

    def totals(self) -> Counters:
        return Counters.total(self.snapshots())


BOOK = Book()


def _atomic_write(path: str, payload: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, path)


def delivery_latency(stats: Any, current: bool = False) -> dict[str, float | None]:
    """p50/p95/p99 (ms) over direct and team deliveries together."""
    if current:  # the last ~10 s; the worse of the two kinds (a live view, not a report)
        entries = [stats.entries.get((n, "WS")) for n in ("direct", "team")]
        out: dict[str, float | None] = {}
        for q in (0.5, 0.95, 0.99):
            values = [e.get_current_response_time_percentile(q) for e in entries if e]
            values = [v for v in values if v is not None]
            out[f"p{int(q * 100)}"] = max(values) if values else None
        return out
    merged = StatsEntry(stats, "deliveries", "WS")
    for name in ("direct", "team"):
        entry = stats.entries.get((name, "WS"))
        if entry is not None:
            merged.extend(entry)
    if not merged.num_requests:
        return {"p50": None, "p95": None, "p99": None}
    return {f"p{int(q * 100)}": merged.get_response_time_percentile(q) for q in (0.5, 0.95, 0.99)}


class WsopShape(LoadTestShape):
    """Constant connections, stage-by-stage message rate (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: LoadPlan | None = None
        self.phase = "connect"
        self.phase_started = 0.0
        self.full_since: float | None = None
        self.stage = -1
        self.rate = 0.0
        self.rate_since = 0.0
        self.planned = 0.0
        self.run_started = 0.0
        self.run_started_at = 0.0  # wall clock: workers and the nemesis count from it
        self.run_ended = 0.0
        self.timeline: list[dict[str, Any]] = []
        self._last: tuple[float, int, int] | None = None

    # -- the stage table ---------------------------------------------------------------

    def _set_rate(self, rate: float) -> None:
        now = time.monotonic()
        if self.rate:
            self.planned += self.rate * (now - self.rate_since)
        self.rate, self.rate_since = rate, now
        assert self.plan is not None
        per_user = rate / self.plan.connections
        self.runner.send_message(
            "wsop_rate", {"per_user_rate": per_user, "run_started_at": self.run_started_at}
        )

    def _enter(self, phase: str) -> None:
        self.phase, self.phase_started = phase, time.monotonic()

    def tick(self) -> tuple[int, float] | None:
        if self.plan is None:
            options = self.runner.environment.parsed_options
            self.plan = LoadPlan.from_json(options.wsop_config)
            self._enter("connect")
        plan = self.plan
        now = time.monotonic()
        in_phase = now - self.phase_started
        if self.phase == "connect":
            full = sum(BOOK.spawned.values()) >= plan.connections
            self.full_since = (self.full_since or now) if full else None
            timeout = plan.connections / plan.spawn_rate + 30
            settled = self.full_since is not None and now - self.full_since >= CONNECT_SETTLE_S
            if settled or in_phase > timeout:
                self._enter("run")
                self.run_started, self.run_started_at = now, time.time()
        if self.phase == "run":
            elapsed, stage = now - self.run_started, len(plan.stages)
            edge = 0.0
            for i, s in enumerate(plan.stages):
                edge += s.seconds
                if elapsed < edge:
                    stage = i
                    break
            if stage >= len(plan.stages):
                self._set_rate(0.0)
                self.run_ended = now
                self._enter("drain")
            elif stage != self.stage:
                self.stage = stage
                self._set_rate(plan.stages[stage].rate)
        if self.phase == "drain" and now - self.phase_started >= plan.grace_s:
            self._enter("finish")
            self.runner.send_message("wsop_finish", {})
        self._status(now)
        done = len(BOOK.finals) >= plan.workers or in_phase > FINISH_TIMEOUT_S
        if self.phase == "finish" and done:
            return None
        return plan.workers, float(plan.workers)  # one pool user per worker process

    # -- status and results ------------------------------------------------------------

    def _status(self, now: float) -> None:
        totals = BOOK.totals()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (totals.sent - self._last[1]) / (now - self._last[0])
        self._last = (now, totals.sent, totals.delivered)
        point = {
            "t": round(now - self.start_time, 2),
            "phase": self.phase,
            "stage": self.stage,
            "target_rate": self.rate,
            "msgs_per_s": round(rate, 1),
            "users": totals.ready,
            "run_started_at": self.run_started_at or None,
            **totals.to_json(),
            "connect_errors": merge_codes(BOOK.snapshots(), "connect_errors"),
            **delivery_latency(self.runner.environment.stats, current=True),
        }
        self.timeline.append(point)
        path = getattr(self.runner.environment.parsed_options, "wsop_status", None)
        if path:
            _atomic_write(path, point)

    def results(self) -> dict[str, Any]:
        assert self.plan is not None
        snapshots = BOOK.snapshots(final=True)
        totals = Counters.total(snapshots)
        run_s = max(0.0, (self.run_ended or time.monotonic()) - self.run_started)
        return {
            "plan": json.loads(self.plan.to_json()),
            "counters": totals.to_json(),
            "windows": merge_windows(snapshots),
            "refused_codes": merge_codes(snapshots),
            "connect_errors": merge_codes(snapshots, "connect_errors"),
            "recovery_reasons": merge_codes(snapshots, "recovery_reasons"),
            "silent_examples": [e for s in snapshots for e in s.get("silent_examples", ())][:10],
            "generators": [s["generator"] for s in snapshots if s.get("generator")],
            "run_started_at": self.run_started_at or None,
            "run_t0": round(self.run_started - self.start_time, 3) if self.run_started else None,
            "finals": len(BOOK.finals),
            "workers": self.plan.workers,
            "planned_messages": round(self.planned),
            "run_s": round(run_s, 3),
            "latency_ms": delivery_latency(self.runner.environment.stats),
            "timeline": self.timeline,
        }


def write_results(shape: WsopShape, path: str) -> None:
    _atomic_write(path, shape.results())
