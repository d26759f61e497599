"""`wsop rebalance --watch`: run until stopped, rebalancing whenever the sidecars change.

Builds the pieces of `wsop.k8s.operator` from the flags `wsop rebalance` already has:
the fleet (Kubernetes or the local stack), the change source (the sidecar Service's
EndpointSlices through the API's watch, or the members file), the elector (a Lease on
Kubernetes, none locally) and the metrics port. One line per run on stderr; `--json`
prints one JSON document per event on stdout instead (JSON lines: `event` is `run`,
`error` or `leader`). SIGTERM or SIGINT: finish the move in flight, release the Lease,
exit 0. A `--json` reader that goes away (`| head -1`) ends the watch the same way,
quietly, with the exit of every command whose stdout closed (`wsop.cli.app`).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsop.checks import check_seconds
from wsop.cli.output import err_console
from wsop.errors import UsageError
from wsop.k8s.operator import WatchConfig, WatchRebalancer
from wsop.k8s.rebalance import Fleet


@dataclass(frozen=True)
class WatchFlags:
    debounce: float
    max_delay: float
    resync: float
    retry: float
    metrics_port: int | None
    metrics_host: str
    lease: str | None
    identity: str | None
    lease_duration: float


def check(flags: WatchFlags) -> None:
    # finite: NaN passed every `< 0` test (and printed as NaN in --json), inf never fired
    check_seconds(flags.debounce, "--debounce")
    check_seconds(flags.max_delay, "--max-delay")
    check_seconds(flags.resync, "--resync", allow_zero=False)
    check_seconds(flags.retry, "--retry")
    check_seconds(flags.lease_duration, "--lease-duration")
    if flags.metrics_port is not None and not 0 <= flags.metrics_port <= 65535:
        raise UsageError(f"--metrics-port must be 0–65535, got {flags.metrics_port}")
    if flags.lease_duration < 3:
        raise UsageError(f"--lease-duration must be ≥ 3 seconds, got {flags.lease_duration}")


def default_identity() -> str:
    """The pod name in a pod (its hostname), else host and pid: unique per candidate."""
    host = socket.gethostname()
    return host if os.environ.get("KUBERNETES_SERVICE_HOST") else f"{host}-{os.getpid()}"


def run_watch(
    make_fleet: Callable[[], Fleet],
    source_factory: Callable[[Callable[[str], None]], Any],
    elector: Any,
    config: WatchConfig,
    flags: WatchFlags,
    where: str,
    as_json: bool,
) -> None:
    """Run the watch loop in the foreground until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    holder: list[WatchRebalancer] = []
    stdout = _Stdout(lambda: holder[0].stop())
    report = stdout.write if as_json else _log_line
    source = source_factory(lambda reason: holder[0].notify(reason))
    loop = WatchRebalancer(make_fleet, source, elector, config, report)
    holder.append(loop)
    port = None
    if flags.metrics_port is not None:
        port = loop.metrics.serve(flags.metrics_port, flags.metrics_host)
    started = {
        "event": "started",
        "where": where,
        "metrics_port": port,
        "lease": flags.lease,
        "identity": getattr(elector, "identity", None),
        "debounce": config.debounce,
        "max_moves": config.max_moves,
        "rate": config.rate,
    }
    report(started)
    if as_json:
        stdout.watch()

    def stop(signum: int, frame: object) -> None:
        loop.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    loop.run()
    if stdout.gone.is_set():
        raise BrokenPipeError  # wsop.cli.app: stdout to /dev/null, the usual quiet exit
    report({"event": "stopped", "runs": loop.runs})


class _Stdout:
    """`--json` lines come from several threads (the lease thread reports `leader`): a
    reader that went away must stop the watch at once, not end one thread with a
    traceback while the others run on until their own next write fails. `watch` also
    notices it between writes, which may be minutes apart."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self.gone = threading.Event()
        self._stop = stop
        self._lock = threading.Lock()

    def write(self, doc: dict[str, Any]) -> None:
        with self._lock:
            if self.gone.is_set():
                return
            try:
                _json_line(doc)
            except BrokenPipeError:
                self._went_away()

    def _went_away(self) -> None:
        self.gone.set()
        self._stop()

    def watch(self) -> None:
        """On a pipe, a thread that waits for the reader to close it (POLLERR)."""
        try:
            fd = sys.stdout.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return
        except (OSError, ValueError):
            return
        poller = select.poll()
        poller.register(fd, 0)  # no events asked: POLLERR/POLLHUP come anyway

        def wait() -> None:
            while not self.gone.is_set():
                if poller.poll(500):
                    self._went_away()

        threading.Thread(target=wait, name="rebalancer-stdout", daemon=True).start()


def _json_line(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _log_line(doc: dict[str, Any]) -> None:
    event = doc["event"]
    if event == "started":
        metrics = f", metrics on port {doc['metrics_port']}" if doc["metrics_port"] else ""
        lease = f", lease {doc['lease']!r} as {doc['identity']}" if doc["lease"] else ""
        text = (
            f"watching {doc['where']}{lease}{metrics} (debounce {doc['debounce']} s, "
            f"at most {doc['max_moves'] or 'all'} moves a run at {doc['rate']}/s)"
        )
    elif event == "leader":
        text = "leading: this replica rebalances" if doc["leader"] else "no longer leading"
    elif event == "error":
        text = f"[red]run failed[/] ({doc['reason']}): {doc['error']}"
    elif event == "stopped":
        text = f"stopped after {doc['runs']} run(s)"
    else:
        verb = "would move" if doc["dry_run"] else "moved"
        done = doc["moves"] if doc["dry_run"] else doc["moved"]
        text = (
            f"rebalanced ({doc['reason']}): max/mean {doc['before']} → {doc['after']}, "
            f"{verb} {done}/{doc['moves']} users ({doc['moved_connections']} connections), "
            f"misplaced {doc['misplaced']} → {doc['misplaced_after']}"
            + (f", {doc['errors']} errors" if doc["errors"] else "")
            + (f", {doc['dropped']} over the budget" if doc["dropped"] else "")
            + (f", stopped: {doc['aborted']}" if doc["aborted"] else "")
        )
    err_console.print(text, highlight=False, soft_wrap=True)
