"""The nemesis: injects `--chaos` faults into the local stack while locust runs.

CLI side (plain Python, one thread in the `wsop loadtest` process; locust and gevent
stay in their own processes). It follows the master's status file to learn when the
run phase started (`run_started_at`, wall clock), then performs each fault at its time
through library calls (`wsop.local.faults`, `wsop.local.stack.scale`, the
`wsop rebalance --local` path) and records what happened: planned time, actual start,
duration, ok or the error. A fault that fails is recorded, never raised: the load test
goes on and the report says which fault did not happen as planned.

Faults run one after the other: one that takes longer than the gap to the next delays
it, and the record shows the actual start. The slow half of `kill-sidecar` and `drain`
(the replacement starting and joining, seconds of Python start-up) runs in the
background like a ReplicaSet controller, so the next fault stays on time; the record's
`recovered_s` says when the stack was whole again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsop.load.chaos import Fault
from wsop.load.profiles import LoadPlan

POLL_S = 0.05
REBALANCE_RATE = 200.0  # moves/s: a rebalance is a fault here, not a gentle background job

Action = Callable[[Fault], dict[str, Any]]


def _describe(out: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in out.items())


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


class Nemesis(threading.Thread):
    """Run `faults` against the local stack, timed from the run phase in `status_path`."""

    def __init__(
        self,
        faults: list[Fault],
        status_path: Path,
        plan: LoadPlan,
        redis_url: str,
        actions: dict[str, Action] | None = None,
    ) -> None:
        super().__init__(name="wsop-nemesis", daemon=True)
        self.faults = faults
        self.status_path = status_path
        self.plan = plan
        self.redis_url = redis_url
        self.actions = actions or {
            "kill-sidecar": self._kill,
            "restart-redis": self._restart_redis,
            "scale": self._scale,
            "rebalance": self._rebalance,
            "drain": self._drain,
        }
        self.records: list[dict[str, Any]] = []
        self.run_started_at: float | None = None
        self.seen: set[str] = set()  # sidecar names ever seen: replacements never reuse one
        self._created = time.time()
        self._halt = threading.Event()
        self._followups: list[threading.Thread] = []

    # -- the thread ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            start = self._wait_for_run()
            for fault in self.faults:
                if start is None or self._halt.wait(max(0.0, start + fault.at_s - time.time())):
                    break
                self.records.append(self._perform(fault, start))
        except Exception as exc:  # noqa: BLE001 - a nemesis bug must not take the run down
            self.records.append({"label": "nemesis", "ok": False, "detail": f"crashed: {exc}"})

    def stop(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """No new fault after this; wait for one in progress; every fault's record."""
        self._halt.set()
        deadline = time.monotonic() + timeout
        if self.is_alive():
            self.join(timeout)
        for follow in self._followups:
            follow.join(max(0.1, deadline - time.monotonic()))
        return self.report()

    def report(self) -> list[dict[str, Any]]:
        done = {r.get("label") for r in self.records}
        missed = [
            {
                "action": f.action,
                "label": f.label,
                "planned_s": f.at_s,
                "started_s": None,
                "duration_s": None,
                "recovered_s": None,
                "ok": False,
                "detail": "not run: the run ended first",
            }
            for f in self.faults
            if f.label not in done
        ]
        return sorted([*self.records, *missed], key=lambda r: r.get("planned_s") or 0.0)

    def _wait_for_run(self) -> float | None:
        """The run phase's wall-clock start, from the status file (None: halted first)."""
        while not self._halt.is_set():
            try:
                started = json.loads(self.status_path.read_text()).get("run_started_at")
            except (OSError, ValueError, AttributeError):
                started = None
            if started and started >= self._created - 1:  # not a previous run's file
                self.run_started_at = float(started)
                return self.run_started_at
            self._halt.wait(POLL_S)
        return None

    def _perform(self, fault: Fault, start: float) -> dict[str, Any]:
        began = time.time()
        then = None
        try:
            out = dict(self.actions[fault.action](fault))
            then = out.pop("_then", None)
            ok, detail = True, _describe(out)
        except Exception as exc:  # noqa: BLE001 - recorded, never raised (see the docstring)
            ok, detail = False, _one_line(exc)
        ended = time.time()
        record = {
            "action": fault.action,
            "label": fault.label,
            "planned_s": fault.at_s,
            "started_s": round(began - start, 3),
            "duration_s": round(ended - began, 3),
            "recovered_s": round(ended - began, 3) if then is None else None,
            "ok": ok,
            "detail": detail,
        }
        if then is not None:
            follow = threading.Thread(
                target=self._follow, args=(record, then, began), name="wsop-nemesis-follow"
            )
            follow.start()
            self._followups.append(follow)
        return record

    @staticmethod
    def _follow(record: dict[str, Any], then: Callable[[], dict[str, Any]], began: float) -> None:
        """The background half of a fault; completes its record."""
        try:
            record["detail"] += ", " + _describe(then())
            record["recovered_s"] = round(time.time() - began, 3)
        except Exception as exc:  # noqa: BLE001 - recorded, never raised
            record["ok"] = False
            record["detail"] += f", replacement failed: {_one_line(exc)}"

    # -- the actions ---------------------------------------------------------------------

    def _remember(self) -> None:
        from wsop.local.faults import current_names

        self.seen |= current_names()

    def _kill(self, fault: Fault) -> dict[str, Any]:
        from wsop.local.faults import kill_sidecar

        return self._replaced(kill_sidecar)

    def _drain(self, fault: Fault) -> dict[str, Any]:
        from wsop.local.faults import roll_sidecar

        return self._replaced(roll_sidecar)

    def _replaced(self, fault_fn: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        """Run a kill or a roll now; its replacement joins in the background (`_then`)."""
        from wsop.local.faults import join_sidecar

        self._remember()
        out = fault_fn(avoid=self.seen, replace=False)
        self.seen.add(out["replacement"])
        avoid = set(self.seen)
        return {**out, "_then": lambda: join_sidecar(out["replacement"], avoid)}

    def _restart_redis(self, fault: Fault) -> dict[str, Any]:
        from wsop.load.localstack import reseed_acl
        from wsop.local.faults import restart_redis

        out = restart_redis(self.redis_url)
        began = time.monotonic()
        reseed_acl(self.plan, self.redis_url)
        out["reseeded_s"] = round(time.monotonic() - began, 3)
        return out

    def _scale(self, fault: Fault) -> dict[str, Any]:
        from wsop.local import stack

        self._remember()
        status = stack.scale(int(fault.count or 1))
        self._remember()
        return {"sidecars": ",".join(s.name for s in status.sidecars)}

    def _rebalance(self, fault: Fault) -> dict[str, Any]:
        from wsop.k8s.rebalance import local_fleet, rebalance

        result = rebalance(local_fleet(), rate=REBALANCE_RATE).to_json()
        if result.get("aborted"):
            raise RuntimeError(f"rebalance aborted: {result['aborted']}")
        out = {k: result.get(k) for k in ("moves", "moved", "before", "after")}
        out["move_errors"] = len(result.get("errors") or ())  # e.g. a user gone mid-move
        return out
