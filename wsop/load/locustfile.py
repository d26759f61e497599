"""The locustfile `wsop loadtest` runs: `python -m locust -f wsop/load/locustfile.py …`.

Locust imports this after it monkey-patched the standard library for gevent, which is
why nothing outside the locust processes may import it (nor `user`/`shape`).

Custom arguments (locust forwards them from the master to every worker):

- `--wsop-config JSON`: the `LoadPlan` (profile, rate, connections, stages, …);
- `--wsop-status PATH`: the master writes its live status here once a second;
- `--wsop-results PATH`: the master writes the run's results here when it quits.

Messages: master → workers `wsop_rate` {per_user_rate, run_started_at} and `wsop_finish`;
workers → master `wsop_spawned` {spawned, of} (connections up, for the connect phase),
`wsop_final` (settled counters) and, every few seconds, a `wsop` entry in the regular
stats report (`report_to_master` / `worker_report`).
"""

from __future__ import annotations

from typing import Any

from locust import events
from locust.runners import MasterRunner, WorkerRunner

from wsop.load.shape import BOOK, WsopShape, write_results
from wsop.load.user import WsopPool, context, current_context

__all__ = ["WsopPool", "WsopShape"]


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--wsop-config", default="", help="wsop load plan (JSON)")
    parser.add_argument("--wsop-status", default="", help="live status file (master)")
    parser.add_argument("--wsop-results", default="", help="results file (master)")


def _on_rate(environment: Any, msg: Any, **_: Any) -> None:
    pool = context(environment)
    started = msg.data.get("run_started_at")
    if started and pool.ledger.run_started_at is None:
        pool.ledger.run_started_at = float(started)  # the fault windows count from here
    pool.set_rate(float(msg.data["per_user_rate"]))


def _on_finish(environment: Any, msg: Any, **_: Any) -> None:
    pool = current_context()
    final = pool.finish() if pool is not None else {}
    environment.runner.send_message("wsop_final", final)


def _on_final(environment: Any, msg: Any, **_: Any) -> None:
    BOOK.finals[msg.node_id] = msg.data or {}


def _on_spawned(environment: Any, msg: Any, **_: Any) -> None:
    BOOK.spawned[msg.node_id] = int((msg.data or {}).get("spawned", 0))


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if runner is None:
        return
    if not isinstance(runner, MasterRunner):
        runner.register_message("wsop_rate", _on_rate)
        runner.register_message("wsop_finish", _on_finish)
    if not isinstance(runner, WorkerRunner):
        runner.register_message("wsop_final", _on_final)
        runner.register_message("wsop_spawned", _on_spawned)
    if not isinstance(runner, MasterRunner | WorkerRunner):
        BOOK.local_snapshot = _local_snapshot


def _local_snapshot() -> dict[str, Any]:
    pool = current_context()
    return pool.snapshot() if pool is not None else {}


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    pool = current_context()
    if pool is not None:
        data["wsop"] = pool.snapshot()


@events.worker_report.add_listener
def _worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    if "wsop" in data:
        BOOK.live[client_id] = data["wsop"]


@events.quit.add_listener
def _quit(**_: Any) -> None:
    environment = _ENV.get("env")
    if environment is None or isinstance(environment.runner, WorkerRunner):
        return
    path = getattr(environment.parsed_options, "wsop_results", "")
    shape = environment.shape_class
    if path and isinstance(shape, WsopShape) and shape.plan is not None:
        write_results(shape, path)


_ENV: dict[str, Any] = {}


@events.init.add_listener
def _remember(environment: Any, **_: Any) -> None:
    _ENV["env"] = environment
