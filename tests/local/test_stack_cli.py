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
import urllib.request
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


def http_get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


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
    result = wsop("up", "--algo", "bounded", "--redis", redis_url)  # used to crash the sidecars
    assert result.returncode == 2 and "cannot route a stack" in result.stderr
    result = wsop("up", "--trunks", "65", "--redis", redis_url)  # refused before any start
    assert result.returncode == 2 and "--trunks must be 0..64" in result.stderr

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


async def _direct_until_delivered(a, data: str, tries: int = 20) -> dict:
    """Send a direct message to user 2 until the ack counts a delivery.

    The sidecars' peer links come up asynchronously after `up` (and holder changes
    after a move): readiness is the sidecar's to report, so the test polls.
    """
    for attempt in range(tries):
        await a.send(json.dumps({"type": "direct", "to": 2, "data": data, "id": f"c{attempt}"}))
        ack = json.loads(await asyncio.wait_for(a.recv(), 5))
        if ack.get("delivered"):
            return ack
        await asyncio.sleep(0.1)
    return ack


@pytest.mark.parametrize("trunks", [None, "0"], ids=["default-trunks", "trunks-0"])
def test_real_sidecar_end_to_end(redis_url: str, trunks: str | None) -> None:
    """The launcher with the real `wsop sidecar`: a direct message through the LB, over
    trunks (the default) and with `wsop up --trunks 0` (one sidecar leg per client)."""
    pytest.importorskip("wsop.sidecar.app")
    flags = ["--trunks", trunks] if trunks is not None else []
    started = up(redis_url, "--insecure", "--algo", "rendezvous", *flags)
    lb_url = started["lb"]["url"]
    argv = Path(f"/proc/{started['lb']['pid']}/cmdline").read_bytes().split(b"\0")
    assert (b"--trunks" in argv) == (trunks is not None)

    async def exchange() -> None:
        a = await connect(f"{lb_url}/ws?tenant=acme&user=1", proxy=None)
        b = await connect(f"{lb_url}/ws?tenant=acme&user=2", proxy=None)
        ack = await _direct_until_delivered(a, "hi")
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


def test_publish_and_online_on_the_local_stack(redis_url: str) -> None:
    """`wsop publish` with nothing but a running `wsop up`: the LB's URL and a publish
    token signed with the stack's secret come from the members file."""
    env = {"WSOP_SECRET": ""}
    up(redis_url, "--algo", "rendezvous", sidecars=1)
    token = mint_token(members()["secret"], "acme", 1)
    lb_url = members()["lb"]["url"]

    async def exchange() -> None:
        async with connect(f"{lb_url}/ws?token={token}", proxy=None) as ws:
            for _ in range(50):  # presence is written as the connection registers
                count = await asyncio.to_thread(
                    wsop, "online", "count", "--tenant", "acme", "--redis", redis_url, "--json"
                )
                if json.loads(count.stdout)["count"] == 1:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"user 1 never online: {count.stdout}")
            args = ("--tenant", "acme", "--to", "1", "--data", '{"a": 1}', "--sender", "ops")
            result = await asyncio.to_thread(wsop, "publish", *args, "--json", env=env)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["delivered"] == 1
            assert "the local stack's secret" in result.stderr
            got = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (got["from"], got["data"]) == ("ops", {"a": 1})
            listed = await asyncio.to_thread(
                wsop_json, "online", "list", "--tenant", "acme", "--redis", redis_url
            )
            assert listed == {"tenant": "acme", "users": [1], "count": 1, "truncated": False}

    asyncio.run(exchange())


def test_real_sidecar_move_switches_lb_upstream(redis_url: str) -> None:
    """Sidecar `/move` → control frame → the LB switches the client's upstream live."""
    pytest.importorskip("wsop.sidecar.app")
    started = up(redis_url, "--insecure", "--algo", "rendezvous")
    lb_url = started["lb"]["url"]
    ring = build("rendezvous", ["s0", "s1"])

    async def move() -> None:
        a = await connect(f"{lb_url}/ws?tenant=acme&user=1", proxy=None)
        b = await connect(f"{lb_url}/ws?tenant=acme&user=2", proxy=None)
        await _direct_until_delivered(a, "warm-up")
        await asyncio.wait_for(b.recv(), 5)
        doc = members()
        token = doc["admin_token"]
        urls = {s["name"]: "http" + s["url"][2:] for s in doc["sidecars"]}
        src = ring.owner(("acme", 2))
        dst = next(n for n in urls if n != src)
        moved = await asyncio.to_thread(
            http_get, f"{urls[src]}/move?tenant=acme&user=2&to={dst}", token
        )
        assert moved == {"moved": 1}
        want = 1 + (ring.owner(("acme", 1)) == dst)
        lb_http = "http" + doc["lb"]["url"][2:]
        for _ in range(100):  # the LB switches asynchronously after the control frame
            report = await asyncio.to_thread(http_get, f"{lb_http}/connections", token)
            if {s["name"]: s["connections"] for s in report["sidecars"]}[dst] == want:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"b never moved to {dst}: {report}")
        # the old upstream drains (the LB keeps forwarding what the old sidecar delivers
        # until the take-over reaches the owner), so nothing is lost across the move
        ack = await _direct_until_delivered(a, "moved")
        assert ack["delivered"] == 1, ack
        got = json.loads(await asyncio.wait_for(b.recv(), 5))
        assert got["data"] == "moved"
        await a.close()
        await b.close()

    asyncio.run(move())
    assert wsop("down").returncode == 0


@pytest.mark.parametrize(
    "command", [("sidecar", "--name", "s0"), ("lb", "--peers", "s0=ws://127.0.0.1:9")]
)
def test_servers_without_a_secret_say_how_to_run(command: tuple[str, ...]) -> None:
    result = wsop(*command, env={"WSOP_SECRET": ""})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "WSOP_SECRET" in lines[0] and "--insecure" in lines[0]
    assert "--secret" not in lines[0]  # servers have no such flag


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ((), 2, "give exactly one of --url URL or --local NAME"),
        (("--url", "http://127.0.0.1:1", "--local", "s0"), 2, "give exactly one of"),
        (("--url", "127.0.0.1:9"), 2, "--url must be a URL http://host[:port]"),
        (("--url", "http://:bad"), 2, "--url must be a URL http://host[:port]"),
        (("--url", "http://h:99999"), 2, "Port out of range"),
        (("--local", "s0", "--wait", "-1"), 2, "--wait must be a number of seconds >= 0"),
        (("--local", "s0", "--wait", "nan"), 2, "--wait must be a number of seconds >= 0"),
        (("--local", "s0", "--wait", "inf"), 2, "--wait must be a number of seconds >= 0"),
        (("--local", "s0"), 1, NO_STACK),
        (("--url", f"http://127.0.0.1:{free_port()}"), 1, "cannot reach the sidecar at"),
    ],
)
def test_drain_bad_input_is_one_line(args: tuple[str, ...], code: int, message: str) -> None:
    result = wsop("drain", *args)
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("scale", "--sidecars", "2"),
        ("down",),
        ("drain", "--local", "s0"),
        ("rebalance", "--local"),
        ("ring", "show", "--local"),
        ("ring", "locate", "--local", "7"),
        ("publish", "--tenant", "acme", "--to", "7", "--data", "1"),
    ],
)
def test_no_local_stack_is_the_same_error_everywhere(args: tuple[str, ...]) -> None:
    """One condition, one exit code: every command that needs the local stack says the
    same line and exits 1 (drain used to exit 2 for it)."""
    result = wsop(*args)
    assert result.returncode == 1, (args, result.stderr)
    assert result.stderr.strip().splitlines() == [f"error: {NO_STACK}"]
    assert result.stdout == ""
