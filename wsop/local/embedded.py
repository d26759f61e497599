"""The embedded default Redis: one private `redis-server` per user, reused across commands.

Without `--redis`/`WSOP_REDIS_URL` every command talks to this server, so a first-time
user gets working state with nothing to install or configure. Its data lives in the
user's state directory and survives restarts (RDB snapshots).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from wsop.errors import BackendUnavailable
from wsop.local.filelock import exclusive
from wsop.local.paths import ensure_state_dir, state_dir
from wsop.local.redis_binary import free_port, start_server


@dataclass(frozen=True)
class EmbeddedRedis:
    """What `wsop redis status` reports about the private server."""

    running: bool
    url: str | None
    pid: int | None
    port: int | None
    data_dir: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _paths() -> tuple[Path, Path, Path]:
    root = state_dir()
    return root / "redis.json", root / "redis.lock", root / "redis"


@contextmanager
def _locked() -> Iterator[None]:
    """Serialise start/stop so two commands started together share one server."""
    _, lock_path, _ = _paths()
    ensure_state_dir()
    with exclusive(lock_path):
        yield


def _answers(port: int) -> bool:
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
        ok = bool(client.ping())
        client.close()
        return ok
    except redis.RedisError:
        return False


def _listening(port: int) -> bool:
    """A bare TCP probe: redis-py's PING retries a refused connection for ~1 s."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _read_record() -> dict[str, int] | None:
    record_path, _, _ = _paths()
    try:
        record = json.loads(record_path.read_text())
        return {"pid": int(record["pid"]), "port": int(record["port"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def status() -> EmbeddedRedis:
    _, _, data_dir = _paths()
    record = _read_record()
    if record and _answers(record["port"]):
        return EmbeddedRedis(
            True,
            f"redis://127.0.0.1:{record['port']}/0",
            record["pid"],
            record["port"],
            str(data_dir),
        )
    return EmbeddedRedis(False, None, None, None, str(data_dir))


def resolve_url(url: str | None) -> str:
    """The Redis to use: the explicit URL, `WSOP_REDIS_URL`, else the embedded one
    (started, or reused, here)."""
    if url:
        return url
    env = os.environ.get("WSOP_REDIS_URL")
    if env:
        return env
    return ensure_running()


def ensure_running() -> str:
    """URL of the private server, starting it if needed (reuse first)."""
    with _locked():
        current = status()
        if current.running and current.url:
            return current.url
        record_path, _, data_dir = _paths()
        port = free_port()
        try:
            proc = start_server(port, data_dir, logfile=data_dir / "redis.log", persist=True)
        except OSError as exc:
            raise BackendUnavailable(f"could not start the embedded redis-server: {exc}") from exc
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "port": port}))
        tmp.replace(record_path)
        return f"redis://127.0.0.1:{port}/0"


def stop(timeout: float = 10.0) -> EmbeddedRedis:
    """Stop the private server (it snapshots on SIGTERM); returns the state before."""
    with _locked():
        before = status()
        record_path, _, _ = _paths()
        if before.running and before.pid:
            with suppress(ProcessLookupError):
                os.kill(before.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and before.port and _answers(before.port):
                time.sleep(0.05)
        record_path.unlink(missing_ok=True)
        return before


def restart_empty(timeout: float = 10.0) -> tuple[EmbeddedRedis, EmbeddedRedis]:
    """Crash the private server and start an empty one on the same port (chaos testing).

    SIGKILL, not SIGTERM: a crash writes no snapshot, and the old snapshot is deleted,
    so the new server starts with no keys at all, as a Redis pod without persistence
    does after a restart. Returns the state before and after.
    """
    with _locked():
        before = status()
        if not (before.running and before.pid and before.port):
            raise BackendUnavailable("the embedded redis-server is not running")
        record_path, _, data_dir = _paths()
        with suppress(ProcessLookupError):
            os.kill(before.pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(before.pid, 0)  # ours when this process started it
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _listening(before.port):
            time.sleep(0.01)
        (data_dir / "dump.rdb").unlink(missing_ok=True)
        try:
            proc = start_server(before.port, data_dir, logfile=data_dir / "redis.log", persist=True)
        except OSError as exc:
            record_path.unlink(missing_ok=True)
            raise BackendUnavailable(f"could not restart the embedded redis-server: {exc}") from exc
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "port": before.port}))
        tmp.replace(record_path)
        return before, status()
