"""One rebalance run: find the sidecars, gather, plan, execute — whatever the source.

`kubernetes_fleet` and `local_fleet` turn a source into a `Fleet` (the ready members,
every member worth asking for connections, and a `MoveTarget`); `rebalance` does the
rest the same way for both. The result object feeds both the CLI's table and `--json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsop.errors import NotFound
from wsop.k8s.executor import Execution, Gathered, MoveTarget, ProgressFn, execute, gather
from wsop.k8s.plan import Plan, max_over_mean, plan_rebalance
from wsop.ring.registry import DEFAULT_EPSILON


@dataclass
class Fleet:
    """Where to rebalance: `members` take connections, `ask` are all asked for theirs."""

    source: str
    where: str
    algo: str
    members: list[str]
    ask: list[str]
    target: MoveTarget
    not_ready: dict[str, str] = field(default_factory=dict)


@dataclass
class RebalanceResult:
    fleet: Fleet
    gathered: Gathered
    plan: Plan
    execution: Execution | None = None
    verified: Gathered | None = None
    """Connections gathered again after the moves: what really happened."""

    @property
    def dry_run(self) -> bool:
        return self.execution is None

    def to_json(self) -> dict[str, Any]:
        run = self.execution
        skipped = dict(self.gathered.skipped)
        if run is not None:
            skipped.update(run.skipped_pods)
        doc = {
            "source": self.fleet.source,
            "where": self.fleet.where,
            "dry_run": self.dry_run,
            "before": self.plan.before,
            "after": self.after,
            "planned_after": self.plan.after,
            "moves": len(self.plan.moves),
            "moved": run.moved if run else 0,
            "moved_connections": run.moved_connections if run else 0,
            "not_attempted": run.not_attempted if run else 0,
            "dropped": self.plan.dropped,
            "skipped_pods": [{"name": n, "reason": r} for n, r in sorted(skipped.items())],
            "not_ready": [
                {"name": n, "reason": r} for n, r in sorted(self.fleet.not_ready.items())
            ],
            "errors": run.errors if run else [],
            "aborted": run.aborted if run else None,
            "observed_after": self.observed_after,
            "unconfirmed": self.unconfirmed,
        }
        planned = self.plan.to_json()
        for key in ("moves", "before", "after", "dropped"):
            planned.pop(key)
        return {**doc, **planned}

    @property
    def misplaced(self) -> int:
        """Connections not on their plan target before the run (budget or not)."""
        return _misplaced(self.gathered, self.plan)

    @property
    def misplaced_after(self) -> int:
        """The same, as the sidecars reported afterwards (when they were asked again);
        else what the moves that succeeded leave."""
        if self.verified is not None:
            return _misplaced(self.verified, self.plan)
        moved = self.execution.moved_connections if self.execution else 0
        return max(0, self.misplaced - moved)

    @property
    def after(self) -> float:
        """max/mean once the moves that succeeded are done (the plan's, on a dry run)."""
        if self.execution is None:
            return self.plan.after
        loads = dict(self.plan.loads_before)
        for mv in self.execution.succeeded:
            loads[mv.source] -= mv.count
            loads[mv.target] += mv.count
        return max_over_mean(loads, len(self.plan.members))

    @property
    def observed_after(self) -> float | None:
        """max/mean of the connections as the sidecars report them after the run."""
        if self.verified is None:
            return None
        return max_over_mean(dict(self.verified.connections), len(self.plan.members))

    @property
    def unconfirmed(self) -> int | None:
        """Moves the sidecar accepted but that did not happen (the user is still on the
        source): a `/move` only asks the LB to switch, so success is checked here."""
        if self.verified is None or self.execution is None:
            return None
        still = {(h.member, h.tenant, str(h.user)) for h in self.verified.holdings}
        return sum(
            1 for mv in self.execution.succeeded if (mv.source, mv.tenant, str(mv.user)) in still
        )


def _misplaced(gathered: Gathered, plan: Plan) -> int:
    targets = plan.targets
    return sum(
        h.count
        for h in gathered.holdings
        if targets.get((h.tenant, str(h.user)), h.member) != h.member
    )


VERIFY_AFTER_S = 1.5  # the LB drains an old upstream for up to 1 s after a switch


def rebalance(
    fleet: Fleet,
    epsilon: float = DEFAULT_EPSILON,
    max_moves: int | None = None,
    rate: float = 50.0,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    stop: Callable[[], str | None] | None = None,
) -> RebalanceResult:
    """Gather every member's connections, plan, and (unless `dry_run`) execute.

    `stop` is the executor's (`execute`): asked before every move."""
    if not fleet.members:
        raise NotFound(f"no ready sidecars in {fleet.where} to rebalance onto")
    gathered = gather(fleet.target, fleet.ask)
    unavailable = [m for m in fleet.members if m in gathered.skipped]
    if len(unavailable) == len(fleet.members):
        reasons = "; ".join(f"{m}: {gathered.skipped[m]}" for m in unavailable)
        raise NotFound(f"no sidecar in {fleet.where} answered /connections ({reasons})")
    plan = plan_rebalance(
        fleet.algo, fleet.members, gathered.holdings, epsilon, max_moves, unavailable
    )
    result = RebalanceResult(fleet, gathered, plan)
    if not dry_run:
        result.execution = execute(
            plan.moves, fleet.target, rate, progress, skipped=gathered.skipped, stop=stop
        )
        if result.execution.succeeded:
            time.sleep(VERIFY_AFTER_S)
            result.verified = gather(fleet.target, fleet.ask)
    return result


def kubernetes_fleet(
    cluster: Any,
    namespace: str,
    selector: str,
    algo: str,
    admin_token: str | None = None,
    service: str | None = None,
    default_port: int | None = None,
) -> Fleet:
    """The selected pods of `namespace`, reached through pods/proxy."""
    from wsop.k8s.discovery import DEFAULT_PORT, discover
    from wsop.k8s.proxy import PodProxyTarget

    found = discover(cluster, namespace, selector, service, default_port or DEFAULT_PORT)
    where = f"{found.where()} ({cluster.describe()})"
    if not found.pods:
        raise NotFound(
            f"no pods match selector {selector!r} in namespace {namespace!r} ({cluster.describe()})"
        )
    not_ready = {p.name: p.reason for p in found.pods if not p.ready}
    if not found.members:
        listed = "; ".join(f"{n}: {r}" for n, r in sorted(not_ready.items()))
        raise NotFound(f"no ready sidecar pods in {where}: {listed}")
    reachable = found.reachable
    target = PodProxyTarget(cluster, namespace, {p.name: p.port for p in reachable}, admin_token)
    return Fleet(
        source="kubernetes",
        where=where,
        algo=algo,
        members=sorted(found.members),
        ask=[p.name for p in reachable],
        target=target,
        not_ready=not_ready,
    )


def local_fleet(algo: str | None = None, path: Path | None = None) -> Fleet:
    """The local stack's sidecars (members file), reached over plain HTTP."""
    from wsop.k8s.local import local_stack

    record, target = local_stack(path)
    names = [s.name for s in record.sidecars]
    return Fleet(
        source="local",
        where="the local stack",
        algo=algo or record.algo,
        members=names,
        ask=names,
        target=target,
    )
