"""Starting, probing and stopping the stack's processes (LB and sidecars) on loopback.

Children run in their own session (Ctrl-C in the launcher's terminal reaches only the
launcher, which then stops them in order) with their output in `state_dir()/logs/`.
A pid read back from the members file is trusted only while `/proc/<pid>/cmdline`
still names the recorded port: after a reboot or a crash the pid may belong to
someone else, and `wsop down` must never signal a stranger.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from wsop import adminclient
from wsop.errors import BackendUnavailable
from wsop.local import stack_file
from wsop.local.stack_file import ProcRecord, StackRecord, logs_dir

SIDECAR_CMD_ENV = "WSOP_SIDECAR_CMD"
"""Replaces `python -m wsop.cli.main sidecar` (tests point it at a stand-in)."""

HOST = "127.0.0.1"


def wsop_command(sub: str) -> list[str]:
    return [sys.executable, "-m", "wsop.cli.main", sub]


def sidecar_prefix() -> list[str]:
    override = os.environ.get(SIDECAR_CMD_ENV)
    return shlex.split(override) if override else wsop_command("sidecar")


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could bind `port` now (with SO_REUSEADDR, like asyncio servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start one child in a new session, appending its output to logs/<name>.log."""
    logs = logs_dir()
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        log.write(f"--- {time.strftime('%F %T')} {shlex.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver the first one.

    A child is ours to stop only once its pid is in a list the caller cleans up from:
    an interrupt between `Popen` returning (or inside it, after the fork) and that
    append would orphan it. Spawn-and-record, and the clean-up itself, run in here.
    Outside the main thread (where signal handlers cannot be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, _: held.append(signum)) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])


def log_tail(name: str, lines: int = 6) -> str:
    try:
        text = (logs_dir() / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def healthy(record: ProcRecord, ca: str | None = None) -> bool:
    health = adminclient.get_json(f"{record.http}/healthz", timeout=1.0, ca=ca)
    return isinstance(health, dict) and health.get("status") == "ok"


def wait_healthy(
    children: Iterable[tuple[ProcRecord, subprocess.Popen[bytes]]],
    timeout: float = 20.0,
    ca: str | None = None,
) -> None:
    """Block until every child answers /healthz; a child that exits fails fast with its log."""
    pending = list(children)
    deadline = time.monotonic() + timeout
    while pending:
        record, proc = pending[0]
        code = proc.poll()
        if code is not None:
            raise BackendUnavailable(
                f"{record.name} exited with status {code} during start-up "
                f"(log: {logs_dir() / (record.name + '.log')}):\n{log_tail(record.name)}"
            )
        if healthy(record, ca):
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise BackendUnavailable(
                f"{record.name} did not answer {record.http}/healthz within {timeout:.0f} s "
                f"(log: {logs_dir() / (record.name + '.log')})"
            )
        time.sleep(0.05)


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return []  # no such process
    except OSError:
        return None  # no /proc here: cannot tell
    return raw.decode(errors="replace").split("\0")


def alive(record: ProcRecord) -> bool:
    """Is the recorded process still running, and still the one we started?"""
    if record.pid <= 0:
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's pid now
    args = _cmdline(record.pid)
    if args is None:
        return True
    return str(record.port) in args  # empty for zombies and vanished pids


def running_record() -> StackRecord | None:
    """The members file if any process it names is still ours and alive (a file left
    by a crashed stack does not count)."""
    record = stack_file.load()
    if record is None or not any(alive(p) for p in record.all_procs()):
        return None
    return record


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def terminate(records: Iterable[ProcRecord], timeout: float = 10.0) -> list[str]:
    """SIGTERM every live record, wait for them to exit (SIGKILL after `timeout`).

    Returns the names that had to be killed.
    """
    targets = [r for r in records if alive(r)]
    for record in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in targets:
            _reap(record.pid)
        targets = [r for r in targets if alive(r)]
        if not targets:
            return []
        time.sleep(0.05)
    for record in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
        _reap(record.pid)
    return [r.name for r in targets]


def admin_get(record: ProcRecord, path: str, token: str, ca: str | None = None) -> Any:
    """GET an admin endpoint; None when the process does not answer (or refuses)."""
    return adminclient.get_json(f"{record.http}{path}", token, timeout=2.0, ca=ca)


def wait_members(record: StackRecord, timeout: float = 30.0) -> None:
    """Block until the LB and every sidecar route over exactly the recorded sidecars
    (a client connecting right after `up`/`scale` returns is routed, not refused).

    On timeout the error says who disagrees and how (the LB's view, a sidecar that sees
    another membership, one that does not answer and whether its process is gone):
    "the LB sees X" alone would contradict the membership it is waiting for."""
    want = {s.name for s in record.sidecars}
    deadline = time.monotonic() + timeout
    while problems := _membership_problems(record, want):
        if time.monotonic() >= deadline:
            raise BackendUnavailable(
                f"the stack did not pick up the membership {sorted(want)} within "
                f"{timeout:.0f} s: {'; '.join(problems)} (logs: {logs_dir()})"
            )
        time.sleep(0.05)


def _membership_problems(record: StackRecord, want: set[str]) -> list[str]:
    """Why the stack does not route over `want` yet (empty: it does)."""
    payload = admin_get(record.lb, "/connections", record.admin_token, record.ca_file)
    if not isinstance(payload, dict):
        return [_silent(record.lb)]
    seen = {s["name"] for s in payload.get("sidecars", []) if s.get("url")}
    if seen != want:
        return [f"the LB sees {sorted(seen)}"]
    problems = []
    for sidecar in record.sidecars:
        health = admin_get(sidecar, "/healthz", record.admin_token, record.ca_file)
        if not isinstance(health, dict):
            problems.append(_silent(sidecar))
        elif "members" in health and set(health["members"]) != want:
            problems.append(f"{sidecar.name} sees {sorted(health['members'])}")
    return problems


def _silent(proc: ProcRecord) -> str:
    if alive(proc):
        return f"{proc.name} does not answer {proc.http}/healthz"
    return f"{proc.name} is not running (pid {proc.pid})"
