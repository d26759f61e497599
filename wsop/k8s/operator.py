"""The watch-driven rebalancer (`wsop rebalance --watch`): nobody has to run a command.

Three threads and one loop:

- a **change source** (`wsop.k8s.watch`: the sidecar Service's EndpointSlices, or the
  local members file) calls `notify(reason)` when the ready sidecars change;
- the **elector** (`wsop.k8s.lease`) acquires and renews the Lease every
  `renew_every` seconds, so renewals go on while a long run executes;
- the **metrics** HTTP server (prometheus_client, its own registry) serves the
  gauges and counters below on every path (`/metrics`, and `/healthz` for probes);
- the **loop** (`run`) waits for a change, **debounces** it (acts `debounce` seconds
  after the *last* change, but never later than `max_delay` after the first: a rolling
  update is one long burst of changes, and its end is what should be planned for), then,
  if it leads, runs one rebalance — gather, plan with the move budget (`max_moves`),
  execute at `rate` moves/s, verify. A run that left work behind (budget, failed or
  unconfirmed moves, an error) schedules another after `retry` seconds; every `resync`
  seconds it runs anyway, in case an event was missed.

A follower does nothing but keep trying for the Lease; on becoming the leader it runs
at once (what changed while it waited is not known). A leader that loses the Lease
stops before its next move (`stop` of the executor).

Metrics (`wsop_rebalancer_…`): `leader`, `members`, `connections`,
`misplaced_connections` (not on their plan target, after the last run),
`plan_max_over_mean{when="before|planned|after"}`, `plan_load_connections{stat="max|mean"}`
(the last plan's loads after its moves), `moves_total{result="done|failed|not_attempted"}`,
`moved_connections_total`, `runs_total{outcome="ok|failed"}`, `membership_changes_total`,
`last_run_timestamp_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from wsop.errors import WsopError
from wsop.k8s.rebalance import Fleet, RebalanceResult, rebalance

log = logging.getLogger("wsop.operator")


class Elector(Protocol):
    is_leader: bool
    renew_every: float
    last_error: str | None

    def step(self) -> bool: ...

    def release(self) -> None: ...


class Source(Protocol):
    def run(self, stop: threading.Event) -> None: ...


@dataclass(frozen=True)
class WatchConfig:
    epsilon: float = 0.25
    max_moves: int | None = 500
    rate: float = 50.0
    debounce: float = 5.0
    max_delay: float = 60.0
    resync: float = 300.0
    retry: float = 10.0
    dry_run: bool = False


class Metrics:
    """The rebalancer's own Prometheus metrics, in a registry of their own."""

    def __init__(self, leader: Callable[[], bool]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        r, p = self.registry, "wsop_rebalancer_"
        Gauge(p + "leader", "1 when this replica holds the Lease", registry=r).set_function(
            lambda: 1.0 if leader() else 0.0
        )
        self.members = Gauge(p + "members", "Ready sidecars in the last run", registry=r)
        self.connections = Gauge(p + "connections", "Connections in the last run", registry=r)
        self.misplaced = Gauge(
            p + "misplaced_connections",
            "Connections not on their plan target after the last run",
            registry=r,
        )
        self.max_over_mean = Gauge(
            p + "plan_max_over_mean", "max/mean load of the last plan", ["when"], registry=r
        )
        self.load = Gauge(
            p + "plan_load_connections",
            "The last plan's max and mean load after its moves",
            ["stat"],
            registry=r,
        )
        self.moves = Counter(p + "moves", "Moves by result", ["result"], registry=r)
        self.moved_connections = Counter(p + "moved_connections", "Connections moved", registry=r)
        self.runs = Counter(p + "runs", "Rebalance runs by outcome", ["outcome"], registry=r)
        self.changes = Counter(
            p + "membership_changes", "Membership changes seen by the watch", registry=r
        )
        self.last_run = Gauge(
            p + "last_run_timestamp_seconds", "When the last run ended (Unix time)", registry=r
        )
        for result in ("done", "failed", "not_attempted"):
            self.moves.labels(result)
        for outcome in ("ok", "failed"):
            self.runs.labels(outcome)

    def record(self, result: RebalanceResult) -> None:
        plan = result.plan
        self.members.set(len(plan.members))
        self.connections.set(plan.total)
        self.misplaced.set(result.misplaced_after)
        self.max_over_mean.labels("before").set(plan.before)
        self.max_over_mean.labels("planned").set(plan.after)
        self.max_over_mean.labels("after").set(result.after)
        loads = [plan.loads_after.get(m, 0) for m in plan.members]
        self.load.labels("max").set(max(loads, default=0))
        self.load.labels("mean").set(sum(loads) / len(loads) if loads else 0)
        run = result.execution
        if run is not None:
            self.moves.labels("done").inc(run.moved)
            self.moves.labels("failed").inc(len(run.errors) - _aborted_errors(run))
            self.moves.labels("not_attempted").inc(run.not_attempted)
            self.moved_connections.inc(run.moved_connections)
        self.runs.labels("ok").inc()
        self.last_run.set(time.time())

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve on `host:port` (0: any free port) in a daemon thread; the port."""
        from prometheus_client import start_http_server

        try:
            server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise WsopError(f"metrics: cannot listen on {host}:{port}: {exc}") from None
        return int(server.server_address[1])


def _aborted_errors(run: Any) -> int:
    """The executor also lists the one move an abort hit as an error: not a failure of
    that move's sidecars, so it counts as not attempted, not as failed."""
    return sum(1 for e in run.errors if run.aborted and e.get("error") == run.aborted)


def summary(result: RebalanceResult, reason: str) -> dict[str, Any]:
    """One run, as the JSON line and the log line report it (no per-move plan)."""
    doc = result.to_json()
    keep = (
        "source", "dry_run", "before", "planned_after", "after", "observed_after", "moves",
        "moved", "moved_connections", "not_attempted", "dropped", "unconfirmed", "aborted",
        "members", "connections", "capacity", "bound_met", "skipped_pods", "not_ready",
    )  # fmt: skip
    out = {"event": "run", "reason": reason, **{k: doc[k] for k in keep}}
    out["errors"] = len(doc["errors"])
    out["misplaced"] = result.misplaced
    out["misplaced_after"] = result.misplaced_after
    return out


def left_work(result: RebalanceResult) -> bool:
    run = result.execution
    if run is None:
        return False
    return bool(result.plan.dropped or run.errors or run.not_attempted or (result.unconfirmed or 0))


class WatchRebalancer:
    """The loop; `notify` is the change source's callback (any thread)."""

    def __init__(
        self,
        make_fleet: Callable[[], Fleet],
        source: Source,
        elector: Elector,
        config: WatchConfig,
        report: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.make_fleet = make_fleet
        self.source = source
        self.elector = elector
        self.config = config
        self.report = report
        self.clock = clock
        self.metrics = Metrics(lambda: self.elector.is_leader)
        self.stopping = threading.Event()
        self._cond = threading.Condition()
        self._first: float | None = None
        self._due: float | None = None
        self._reasons: list[str] = []
        self.runs = 0

    def notify(self, reason: str) -> None:
        """A change: run `debounce` s after the last one (≤ `max_delay` after the first)."""
        self.metrics.changes.inc()
        self._schedule(reason, self.config.debounce)

    def _schedule(self, reason: str, delay: float) -> None:
        with self._cond:
            now = self.clock()
            if self._first is None:
                self._first = now
            self._due = min(now + delay, self._first + self.config.max_delay)
            self._reasons.append(reason)
            self._cond.notify_all()

    def _stop_reason(self) -> str | None:
        if self.stopping.is_set():
            return "shutting down"
        if not self.elector.is_leader:
            return "lost the lease: another replica leads now"
        return None

    def _elect(self) -> None:
        was = False
        while not self.stopping.is_set():
            now = self.elector.step()
            if now and not was:
                self.report({"event": "leader", "leader": True})
                self._schedule("became the leader", 0.0)
            elif was and not now:
                self.report({"event": "leader", "leader": False})
            was = now
            self.stopping.wait(self.elector.renew_every)

    def start(self) -> None:
        """The source and elector threads (daemons: they block in network reads)."""
        for name, target in (
            ("watch", lambda: self.source.run(self.stopping)),
            ("lease", self._elect),
        ):
            threading.Thread(target=target, name=f"rebalancer-{name}", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()

    def run(self) -> None:
        """Until `stop()`: wait, debounce, rebalance when leading; release the Lease last."""
        self.start()
        next_resync = self.clock() + self.config.resync
        try:
            while not self.stopping.is_set():
                with self._cond:
                    now = self.clock()
                    due = self._due if self._due is not None else next_resync
                    if now < min(due, next_resync):
                        self._cond.wait(min(min(due, next_resync) - now, 1.0))
                        continue
                    reasons = self._reasons or ["periodic resync"]
                    self._first, self._due, self._reasons = None, None, []
                next_resync = self.clock() + self.config.resync
                if self.elector.is_leader:
                    self.run_once("; ".join(dict.fromkeys(reasons)))
        finally:
            self.elector.release()

    def run_once(self, reason: str) -> RebalanceResult | None:
        c = self.config
        self.runs += 1
        try:
            result = rebalance(
                self.make_fleet(), c.epsilon, c.max_moves, c.rate, c.dry_run, stop=self._stop_reason
            )
        except WsopError as exc:
            self.metrics.runs.labels("failed").inc()
            self.report({"event": "error", "reason": reason, "error": str(exc)})
            if not self.stopping.is_set():
                self._schedule(f"retry after: {exc}", c.retry)
            return None
        self.metrics.record(result)
        self.report(summary(result, reason))
        if left_work(result) and not self.stopping.is_set():
            self._schedule("retry: the last run left work", c.retry)
        return result
