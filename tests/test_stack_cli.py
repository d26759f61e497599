"""`wsop up/scale/status/down` as users run them: real processes on loopback.

Most tests use the stand-in sidecar (tests/standin_sidecar.py, via WSOP_SIDECAR_CMD) so
they are fast and test the launcher alone; one runs the real `wsop sidecar`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import ROOT, run_wsop
from wsop.auth import mint_token
from wsop.local.redis_binary import free_port
from wsop.ring import build

STANDIN = shlex.join([sys.executable, str(ROOT / "tests" / "standin_sidecar.py")])
NO_STACK = "no local stack running; start one with `wsop up`"


def state() -> Path:
    return Path(os.environ["WSOP_STATE_DIR"])


def members() -> dict:
    return json.loads((state() / "stack.json").read_text())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (reparented, not yet reaped) counts as gone
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]
    except OSError:
        return False


def wsop(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_wsop(*args, env=env)


def wsop_json(*args: str, env: dict[str, str] | None = None) -> dict:
    result = wsop(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def standin_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WSOP_SIDECAR_CMD", STANDIN)
    yield


@pytest.fixture(autouse=True)
def _teardown_stack() -> Iterator[None]:
    """Never leave a stack behind, whatever the test did."""
    yield
    path = state() / "stack.json"
    if path.exists():
        wsop("down")


def up(redis_url: str, *extra: str, sidecars: int = 2) -> dict:
    return wsop_json(
        "up", "--detach", "--sidecars", str(sidecars), "--port", str(free_port()),
        "--redis", redis_url, *extra,
    )  # fmt: skip


def test_up_status_scale_down(standin_env: None, redis_url: str) -> None:
    started = up(redis_url, "--insecure", "--algo", "rendezvous")
    assert [s["name"] for s in started["sidecars"]] == ["s0", "s1"]
    assert started["lb"]["alive"] and all(s["alive"] for s in started["sidecars"])
    assert started["detached"] is True and started["insecure"] is True

    path = state() / "stack.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = members()
    assert doc["algo"] == "rendezvous" and doc["redis_url"] == redis_url
    assert len(doc["admin_token"]) >= 32 and doc["lb"]["url"] == started["lb"]["url"]
    assert {s["name"]: s["url"] for s in doc["sidecars"]} == {
        s["name"]: s["url"] for s in started["sidecars"]
    }
    assert (state() / "logs" / "lb.log").exists()

    lb_url = started["lb"]["url"]
    owner = build("rendezvous", ["s0", "s1"]).owner(("acme", 4))

    async def with_client() -> dict:
        async with connect(f"{lb_url}/ws?tenant=acme&user=4", proxy=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == f"{owner}:hi"
            return await asyncio.to_thread(wsop_json, "status")

    status = asyncio.run(with_client())
    assert set(status) >= {"lb", "sidecars"}
    assert status["lb"]["connections"] == 1
    assert {s["name"]: s["connections"] for s in status["sidecars"]} == {
        n: int(n == owner) for n in ("s0", "s1")
    }
    human = wsop("status")
    assert human.returncode == 0 and "s1" in human.stdout and "lb" in human.stdout

    grown = wsop_json("scale", "--sidecars", "3")
    assert [s["name"] for s in grown["sidecars"]] == ["s0", "s1", "s2"]
    assert members()["version"] > doc["version"]

    old_pids = {s["name"]: s["pid"] for s in grown["sidecars"]}
    shrunk = wsop_json("scale", "--sidecars", "1")
    assert [s["name"] for s in shrunk["sidecars"]] == ["s0"]
    assert not pid_alive(old_pids["s1"]) and not pid_alive(old_pids["s2"])
    assert [s["name"] for s in members()["sidecars"]] == ["s0"]

    stopped = wsop_json("down")
    assert sorted(stopped["stopped"]) == ["lb", "s0"] and stopped["killed"] == []
    assert not path.exists()
    assert not pid_alive(started["lb"]["pid"]) and not pid_alive(old_pids["s0"])
    gone = wsop("status")
    assert gone.returncode == 1 and NO_STACK in gone.stderr


def test_secure_stack_generates_secret(standin_env: None, redis_url: str) -> None:
    env = {"WSOP_SECRET": ""}
    started = wsop_json(
        "up", "--detach", "--sidecars", "1", "--port", str(free_port()), "--redis", redis_url,
        env=env,
    )  # fmt: skip
    secret = members()["secret"]
    assert secret and len(secret) >= 32 and started["insecure"] is False
    lb_url = started["lb"]["url"]

    async def clients() -> None:
        token = mint_token(secret, "acme", 1)
        async with connect(f"{lb_url}/ws?token={token}", proxy=None) as ws:
            await ws.send("x")
            assert await ws.recv() == "s0:x"
        with pytest.raises(InvalidStatus):
            await connect(f"{lb_url}/ws?tenant=acme&user=1", proxy=None)

    asyncio.run(clients())


def test_refusals_and_exit_codes(standin_env: None, redis_url: str) -> None:
    for args in (
        ["up", "--sidecars", "0"],
        ["up", "--sidecars", "-2"],
        ["scale", "--sidecars", "0"],
    ):
        result = wsop(*args)
        assert result.returncode == 2 and "--sidecars" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    for args in (["scale", "--sidecars", "2"], ["status"], ["down"], ["status", "--json"]):
        result = wsop(*args)
        assert result.returncode == 1 and NO_STACK in result.stderr, (args, result.stderr)
        assert result.stdout == ""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = wsop("up", "--detach", "--port", str(port), "--redis", redis_url, "--insecure")
    assert result.returncode == 1 and f"port {port}" in result.stderr
    result = wsop("up", "--algo", "nope", "--redis", redis_url)
    assert result.returncode == 2 and "unknown algorithm" in result.stderr

    up(redis_url, "--insecure", sidecars=1)
    again = wsop("up", "--detach", "--port", str(free_port()), "--redis", redis_url)
    assert again.returncode == 1 and "already running" in again.stderr
    assert "Traceback" not in again.stderr


def test_failed_start_cleans_up(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    failing = shlex.join([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    monkeypatch.setenv("WSOP_SIDECAR_CMD", failing)
    result = wsop("up", "--detach", "--port", str(free_port()), "--redis", redis_url, "--insecure")
    assert result.returncode == 1
    assert "exited with status 3" in result.stderr and "boom" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (state() / "stack.json").exists()


def test_foreground_up_stops_on_ctrl_c(standin_env: None, redis_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsop.cli.main", "up", "--sidecars", "1", "--insecure",
         "--port", str(free_port()), "--redis", redis_url, "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["detached"] is False
        pids = [started["lb"]["pid"], started["sidecars"][0]["pid"]]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert not (state() / "stack.json").exists()
        deadline = time.monotonic() + 5
        while any(map(pid_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(pid_alive, pids))
    finally:
        if proc.poll() is None:
            proc.kill()


def test_real_sidecar_end_to_end(redis_url: str) -> None:
    """The launcher with the real `wsop sidecar`: a direct message through the LB."""
    pytest.importorskip("wsop.sidecar.app")
    started = up(redis_url, "--insecure", "--algo", "rendezvous")
    lb_url = started["lb"]["url"]

    async def exchange() -> None:
        a = await connect(f"{lb_url}/ws?tenant=acme&user=1", proxy=None)
        b = await connect(f"{lb_url}/ws?tenant=acme&user=2", proxy=None)
        # The sidecars' peer links come up asynchronously after `up`: resend while the
        # ack says nothing was delivered (readiness of peers is the sidecar's to report).
        for attempt in range(20):
            await a.send(json.dumps({"type": "direct", "to": 2, "data": "hi", "id": f"c{attempt}"}))
            ack = json.loads(await asyncio.wait_for(a.recv(), 5))
            if ack.get("delivered"):
                break
            await asyncio.sleep(0.1)
        assert ack["type"] == "ack" and ack["delivered"] == 1, ack
        got = json.loads(await asyncio.wait_for(b.recv(), 5))
        assert (got["type"], got["from"], got["data"]) == ("message", 1, "hi")
        status = await asyncio.to_thread(wsop_json, "status")
        assert status["lb"]["connections"] == 2
        assert sum(s["connections"] for s in status["sidecars"]) == 2
        await a.close()
        await b.close()

    asyncio.run(exchange())
    assert wsop("down").returncode == 0
