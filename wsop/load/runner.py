"""CLI side of a run: start locust as subprocesses, tail its status, read back the results.

Locust (and gevent's monkey-patching) stays in its own processes: this module only
builds command lines, watches files and waits. One process runs everything when no
workers are asked for; `--workers N` runs a master plus N local worker processes; the
multi-machine modes run only the master or only a worker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wsop.errors import BackendUnavailable, UsageError, WsopError
from wsop.load.failures import early_stop
from wsop.load.profiles import LoadPlan

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_MASTER_PORT = 5557
StatusCallback = Callable[[dict[str, Any]], None]


def normalize_target(url: str) -> str:
    """`ws://host:port` from what the user typed; UsageError (exit 2) if it is not one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("ws", "wss"):
        raise UsageError(f"--target must be a ws:// or wss:// URL, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"--target has a bad port: {url!r}") from None
    if not parts.hostname:
        raise UsageError(f"--target has no host: {url!r}")
    path = parts.path.rstrip("/")
    if path not in ("", "/ws"):
        raise UsageError(f"--target is the LB's base URL (ws://HOST:PORT), got path {path!r}")
    netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:
        netloc = f"[{parts.hostname}]" + (f":{port}" if port else "")
    return f"{parts.scheme}://{netloc}"


def check_reachable(url: str, timeout: float = 3.0) -> None:
    """Fail fast (exit 1, naming the URL) when nothing listens at the target."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return
    except OSError as exc:
        raise BackendUnavailable(f"cannot reach {url}: {exc.strerror or exc}") from None


def max_local_workers() -> int:
    return 2 * (os.cpu_count() or 1)


def check_workers(workers: int) -> None:
    limit = max_local_workers()
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    if workers > limit:
        raise UsageError(
            f"--workers {workers} is more than this machine can drive "
            f"(at most 2 × {os.cpu_count()} CPUs = {limit}); use --master with remote workers"
        )


@dataclass
class RunSpec:
    target: str
    plan: LoadPlan
    workers: int = 0  # local worker processes; 0 = one process does everything
    master_only: bool = False  # the workers run elsewhere (`wsop loadtest --worker`)
    master_bind: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    report_dir: Path | None = None
    work_dir: Path | None = None  # status, results and log (default: report_dir or a temp dir)
    env: dict[str, str] = field(default_factory=dict)
    on_status: StatusCallback | None = None


def _locust(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]


def worker_command(master_host: str, master_port: int) -> list[str]:
    return _locust(
        "--worker", "--master-host", master_host, "--master-port", str(master_port),
        "--loglevel", "WARNING",
    )  # fmt: skip


def master_command(spec: RunSpec, status: Path, results: Path) -> list[str]:
    argv = _locust(
        "--headless", "--host", spec.target, "--only-summary", "--loglevel", "WARNING",
        "--wsop-config", spec.plan.to_json(),
        "--wsop-status", str(status), "--wsop-results", str(results),
    )  # fmt: skip
    if spec.workers or spec.master_only:
        argv += [
            "--master", "--expect-workers", str(spec.plan.workers),
            "--master-bind-host", spec.master_bind, "--master-bind-port", str(spec.master_port),
        ]  # fmt: skip
    if spec.report_dir is not None:
        argv += [
            "--html", str(spec.report_dir / "report.html"),
            "--csv", str(spec.report_dir / "locust"), "--csv-full-history",
        ]  # fmt: skip
    return argv


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _stop(procs: list[subprocess.Popen[bytes]], sig: int = signal.SIGTERM) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(spec: RunSpec) -> dict[str, Any]:
    """Run the plan to completion; the master's results document (see `shape.results`)."""
    work = spec.work_dir or spec.report_dir or Path(tempfile.mkdtemp(prefix="wsop-loadtest-"))
    work.mkdir(parents=True, exist_ok=True)
    status, results, log = work / "status.json", work / "results.json", work / "locust.log"
    for stale in (status, results):
        stale.unlink(missing_ok=True)
    env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    with open(log, "ab") as out:
        master = subprocess.Popen(
            master_command(spec, status, results), stdout=out, stderr=subprocess.STDOUT, env=env
        )
        procs.append(master)
        for _ in range(spec.workers):
            procs.append(
                subprocess.Popen(
                    worker_command("127.0.0.1", spec.master_port),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
    plan = spec.plan
    budget = plan.duration + plan.connections / plan.spawn_rate + plan.grace_s + 120
    deadline = time.monotonic() + budget + (3600 if spec.master_only else 0)
    url, has_secret = f"{spec.target}/ws", bool(env.get("WSOP_SECRET"))
    try:
        while master.poll() is None:
            if time.monotonic() > deadline:
                raise WsopError(f"the load test did not finish within {budget:.0f} s; log: {log}")
            point = _read_status(status)
            if point is not None:
                if spec.on_status is not None:
                    spec.on_status(point)
                # a stack that refuses every handshake will refuse them for the whole run
                why = early_stop(point, plan.connections, url, has_secret)
                if why is not None:
                    raise WsopError(why)
            time.sleep(0.5)
    finally:
        _stop(procs)
    if not results.exists():
        raise WsopError(
            f"locust exited with code {master.returncode} and no results; log {log}:\n" + _tail(log)
        )
    document = json.loads(results.read_text())
    document["log"] = str(log)
    return document


def _read_status(path: Path) -> dict[str, Any] | None:
    """The master's latest status point (None before the first, or mid-rename)."""
    try:
        point = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return point if isinstance(point, dict) else None


def run_worker(master_host: str, master_port: int, env: dict[str, str]) -> int:
    """A worker for a master elsewhere; returns locust's exit code."""
    proc = subprocess.Popen(worker_command(master_host, master_port), env={**os.environ, **env})
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop([proc], signal.SIGINT)
        raise
