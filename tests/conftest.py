"""Shared fixtures: real redis-server processes on free loopback ports, isolated state dirs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from wsop.local.redis_binary import free_port, start_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep every test away from the developer's own embedded Redis and state, and leave
    nothing running behind it — even when it fails half-way through."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("WSOP_STATE_DIR", str(state))
    monkeypatch.delenv("WSOP_REDIS_URL", raising=False)
    yield
    sweep_state_dir(state)


def sweep_state_dir(state: Path) -> None:
    """Stop what a test started in its state dir: a local stack, the embedded Redis,
    and any other process whose command line names that dir."""
    from wsop.errors import WsopError
    from wsop.local import embedded, stack, stack_file

    if stack_file.members_path().exists():
        with contextlib.suppress(WsopError, OSError):
            stack.down()
    if (state / "redis").exists() or embedded.status().running:
        with contextlib.suppress(WsopError, OSError):
            embedded.stop()
    kill_matching(str(state))


def kill_matching(needle: str) -> list[int]:
    """SIGKILL every process of ours whose command line or cwd contains `needle`."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if needle in cmdline or cwd.startswith(needle):
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's last word: no redis-server, sidecar, LB or locust of ours survives it
    (every process started under the session's temp root is killed)."""
    yield
    root = str(tmp_path_factory.getbasetemp())
    for pid in kill_matching(root):
        print(f"\nkilled a process left running by the tests: pid {pid}", file=sys.stderr)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real redis-server for the session; tests get it flushed through `redis_url`."""
    port = free_port()
    proc = start_server(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def run_wsop(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    """Run the real `wsop` console entry point as a subprocess."""
    import os

    # a server refuses to start without an admin token: tests get one unless they say
    # otherwise (env={"WSOP_ADMIN_TOKEN": ""} to test the refusal)
    full_env = {"WSOP_ADMIN_TOKEN": "test-admin-token", **os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "wsop.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )
