"""`wsop lb` against stand-in sidecars (real processes on loopback, tests/standin_sidecar.py).

The LB runs in-process for most tests (fast, and its relays are reachable for the
`switch_to` seam); one test runs the real `wsop lb` command for signals and exit codes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import ROOT, run_wsop
from wsop.auth import mint_token
from wsop.discovery import Members, RegistryFileMembership, StaticMembership
from wsop.lb import LBConfig, LoadBalancer, Relay
from wsop.local.redis_binary import free_port
from wsop.ring import DEFAULT_ALGORITHM, build

SECRET = "s" * 32
ADMIN = "admin-token-for-tests"
ALGO = "rendezvous"  # maglev builds take ~0.5 s: one test covers the default
STANDIN = str(ROOT / "tests" / "standin_sidecar.py")


def wait_healthy(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.03)
    raise RuntimeError(f"nothing healthy on port {port}")


def start_standin(name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, STANDIN, "sidecar", "--name", name, "--port", str(port)],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "WSOP_ADMIN_TOKEN"},
    )
    wait_healthy(port)
    return proc, f"ws://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def standins() -> Iterator[Members]:
    started = {name: start_standin(name) for name in ("s0", "s1", "s2")}
    yield {name: url for name, (_, url) in started.items()}
    for proc, _ in started.values():
        stop(proc)


@asynccontextmanager
async def running_lb(source, **overrides) -> AsyncIterator[LoadBalancer]:
    config = LBConfig(
        host="127.0.0.1",
        port=free_port(),
        source=source,
        algo=ALGO,
        secret=SECRET,
        admin_token=ADMIN,
        drain_s=0.2,
        move_drain_s=0.5,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    lb = LoadBalancer(config)
    await lb.start()
    try:
        yield lb
    finally:
        await lb.stop()


def ws_url(lb: LoadBalancer, query: str = "") -> str:
    return f"ws://127.0.0.1:{lb.config.port}/ws{query}"


def token(tenant: str, user: int | str, **kw) -> str:
    return mint_token(SECRET, tenant, user, **kw)


async def dial(lb: LoadBalancer, tenant: str = "acme", user: int | str = 1) -> ClientConnection:
    return await connect(ws_url(lb, f"?token={token(tenant, user)}"), proxy=None)


def http_get(port: int, path: str, admin: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if admin:
        request.add_header("Authorization", f"Bearer {admin}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aget(port: int, path: str, admin: str | None = None) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, port, path, admin)


# --- authentication ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bad_tokens_get_401_with_a_reason(standins: Members) -> None:
    async with running_lb(StaticMembership(standins)) as lb:
        port = lb.config.port
        expired = token("acme", 1, ttl_s=10, now=time.time() - 60)
        forged = mint_token("x" * 32, "acme", 1)
        for query, reason in [
            ("", "missing token"),
            (f"?token={expired}", "expired"),
            (f"?token={forged}", "signature"),
            ("?token=garbage", "malformed"),
            ("?tenant=acme&user=1", "missing token"),  # not insecure: no trust in ?user=
        ]:
            status, body = await aget(port, f"/ws{query}")
            assert status == 401 and reason in body, (query, body)
            assert body.count("\n") == 1
        with pytest.raises(InvalidStatus) as info:
            await connect(ws_url(lb, f"?token={expired}"), proxy=None)
        assert info.value.response.status_code == 401
        assert lb.stats.auth_failures == 6


@pytest.mark.asyncio
async def test_insecure_mode_trusts_query(standins: Members) -> None:
    source = StaticMembership(standins)
    async with running_lb(source, insecure=True, secret=None) as lb:
        ws = await connect(ws_url(lb, "?tenant=acme&user=7"), proxy=None)
        await ws.send("hi")
        owner = build(ALGO, list(standins)).owner(("acme", 7))
        assert await ws.recv() == f"{owner}:hi"
        await ws.close()


# --- routing and relaying ---------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("algo", [ALGO, DEFAULT_ALGORITHM])
async def test_routes_to_ring_owner_and_forwards_credentials(standins: Members, algo: str) -> None:
    ring = build(algo, list(standins))
    async with running_lb(StaticMembership(standins), algo=algo) as lb:
        seen = set()
        for user in range(12):
            tok = token("acme", user)
            async with connect(
                ws_url(lb, "?x=1"),
                additional_headers={"Authorization": f"Bearer {tok}"},
                proxy=None,
            ) as ws:
                await ws.send("whoami")
                info = json.loads(await ws.recv())
            assert info["sidecar"] == ring.owner(("acme", user))
            assert info["path"] == "/ws?x=1" and info["auth"] == f"Bearer {tok}"
            seen.add(info["sidecar"])
        assert len(seen) > 1  # the ring spreads users, the test really routes


@pytest.mark.asyncio
async def test_relays_text_and_bytes_both_ways(standins: Members) -> None:
    async with running_lb(StaticMembership(standins)) as lb, await dial(lb) as ws:
        owner = build(ALGO, list(standins)).owner(("acme", 1))
        await ws.send("héllo")
        assert await ws.recv() == f"{owner}:héllo"
        await ws.send(b"\x00\xff")
        reply = await ws.recv()
        assert isinstance(reply, bytes) and reply == owner.encode() + b":\x00\xff"
        for i in range(50):
            await ws.send(str(i))
        assert [await ws.recv() for _ in range(50)] == [f"{owner}:{i}" for i in range(50)]
        assert lb.stats.client_to_upstream == 52 and lb.stats.upstream_to_client == 52


@pytest.mark.asyncio
async def test_upstream_close_code_reaches_client(standins: Members) -> None:
    async with running_lb(StaticMembership(standins)) as lb:
        ws = await dial(lb)
        await ws.send("close:4001")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4001, "bye")
        await asyncio.sleep(0.05)
        assert lb.stats.connections == 0


@pytest.mark.asyncio
async def test_vanished_sidecar_closes_1012() -> None:
    proc, url = start_standin("s0")
    try:
        async with running_lb(StaticMembership({"s0": url})) as lb:
            ws = await dial(lb)
            await ws.send("die")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1012
            assert lb.stats.upstream_failures["vanished"] == 1
    finally:
        stop(proc)


@pytest.mark.asyncio
async def test_no_sidecar_1013_and_unreachable_1013(standins: Members) -> None:
    async with running_lb(StaticMembership({})) as lb, await dial(lb) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1013
    dead = f"ws://127.0.0.1:{free_port()}"
    async with running_lb(StaticMembership({"s9": dead})) as lb, await dial(lb) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1013 and "s9" in ws.close_reason
        assert lb.stats.upstream_failures["connect"] == 1


@pytest.mark.asyncio
async def test_sidecar_refusal_closes_1008(standins: Members) -> None:
    async with running_lb(StaticMembership(standins)) as lb:
        ws = await connect(ws_url(lb, f"?reject=403&token={token('acme', 1)}"), proxy=None)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008


@pytest.mark.asyncio
async def test_follows_members_file(tmp_path: Path, standins: Members) -> None:
    path = tmp_path / "stack.json"
    source = RegistryFileMembership(path, interval=0.02)
    async with running_lb(source) as lb:
        assert lb.placement is None
        doc = {"sidecars": [{"name": "s1", "url": standins["s1"], "pid": 0}]}
        path.write_text(json.dumps(doc))
        for _ in range(100):
            if lb.members:
                break
            await asyncio.sleep(0.02)
        async with await dial(lb, user=5) as ws:
            await ws.send("x")
            assert await ws.recv() == "s1:x"


# --- admin HTTP -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_admin_endpoints(standins: Members) -> None:
    async with running_lb(StaticMembership(standins)) as lb:
        port = lb.config.port
        status, body = await aget(port, "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok", "name": "lb"}
        for path in ("/metrics", "/connections"):
            assert (await aget(port, path))[0] == 401
            assert (await aget(port, path, "wrong"))[0] == 401
        assert (await aget(port, "/nope"))[0] == 404
        async with await dial(lb, user=3) as ws:
            await ws.send("x")
            await ws.recv()
            status, body = await aget(port, "/connections", ADMIN)
            payload = json.loads(body)
            owner = build(ALGO, list(standins)).owner(("acme", 3))
            assert status == 200 and payload["connections"] == 1
            counts = {s["name"]: s["connections"] for s in payload["sidecars"]}
            assert counts == {n: int(n == owner) for n in standins}
            status, text = await aget(port, "/metrics", ADMIN)
            assert status == 200
            assert 'wsop_lb_messages_total{direction="client_to_upstream"} 1.0' in text
            assert f'wsop_lb_connections{{sidecar="{owner}"}} 1.0' in text
    async with running_lb(StaticMembership(standins), admin_token=None) as lb:
        assert (await aget(lb.config.port, "/connections"))[0] == 200  # no token configured


# --- the rebalance seam -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_relay_switch_to_moves_a_live_client(standins: Members) -> None:
    async with running_lb(StaticMembership(standins)) as lb, await dial(lb, user=9) as ws:
        await ws.send("a")
        first = (await ws.recv()).split(":")[0]
        (relay,) = lb.relays
        assert isinstance(relay, Relay) and relay.owner == first
        old_upstream = relay.upstream
        target = next(n for n in standins if n != first)
        await ws.send("slowpush:5")  # the old sidecar keeps delivering after the switch
        await relay.switch_to(target, standins[target])
        await ws.send("b")
        got = [await ws.recv() for _ in range(6)]
        assert f"{target}:b" in got  # the client's next message went to the new sidecar
        assert sorted(m for m in got if m != f"{target}:b") == [
            f"{first}:push:{i}" for i in range(5)
        ]  # and nothing the old one sent during the drain was lost
        await asyncio.wait_for(old_upstream.wait_closed(), 2)
        assert old_upstream.close_code == 1000  # drained, then closed; not the client
        assert dict(lb.stats.per_sidecar) == {target: 1}
        # a failed switch changes nothing
        with pytest.raises(OSError):
            await relay.switch_to("s9", f"ws://127.0.0.1:{free_port()}")
        await ws.send("c")
        assert await ws.recv() == f"{target}:c"


@pytest.mark.asyncio
async def test_misplaced_relays_follow_the_ring(tmp_path: Path, standins: Members) -> None:
    path = tmp_path / "stack.json"

    def write(names: list[str]) -> None:
        doc = {"sidecars": [{"name": n, "url": standins[n], "pid": 0} for n in names]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    write(["s0"])
    async with running_lb(RegistryFileMembership(path, interval=0.02)) as lb:
        clients = [await dial(lb, user=u) for u in range(8)]
        for ws in clients:
            await ws.send("x")
            assert await ws.recv() == "s0:x"
        assert lb.misplaced() == []
        write(list(standins))
        for _ in range(200):
            if len(lb.members) == 3:
                break
            await asyncio.sleep(0.02)
        moves = lb.misplaced()
        ring = build(ALGO, list(standins))
        assert moves and all(owner == ring.owner(r.key) for r, owner, _ in moves)
        for relay, owner, url in moves:
            await relay.switch_to(owner, url)
        assert lb.misplaced() == []
        for user, ws in enumerate(clients):
            await ws.send("y")
            assert await ws.recv() == f"{ring.owner(('acme', user))}:y"
            await ws.close()


@pytest.mark.asyncio
async def test_sidecar_move_frame_switches_the_client(standins: Members) -> None:
    async with running_lb(StaticMembership({"s0": standins["s0"]})) as lb:
        ws = await connect(ws_url(lb, f"?moved_from=evil&x=1&token={token('acme', 2)}"), proxy=None)
        await ws.send("whoami")
        info = json.loads(await ws.recv())
        assert info["sidecar"] == "s0" and "moved_from" not in info["path"]  # stripped
        await ws.send(f"sendmove:s2 {standins['s2']}")
        for _ in range(100):
            if lb.relays and next(iter(lb.relays)).owner == "s2":
                break
            await asyncio.sleep(0.02)
        await ws.send("whoami")
        info = json.loads(await ws.recv())  # the control frame never reached the client
        assert info["sidecar"] == "s2" and info["path"].endswith("&moved_from=s0")
        assert dict(lb.stats.per_sidecar) == {"s2": 1}
        await ws.send(f"sendmove:s9 ws://127.0.0.1:{free_port()}")  # unreachable: stays
        for _ in range(100):
            if lb.stats.upstream_failures["switch"]:
                break
            await asyncio.sleep(0.02)
        await ws.send("z")
        assert await ws.recv() == "s2:z"
        await ws.close()


# --- the real command -------------------------------------------------------------------


def test_lb_command_sigterm_closes_1012(standins: Members) -> None:
    port = free_port()
    peers = ",".join(f"{n}={u}" for n, u in standins.items())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsop.cli.main",
            "lb",
            "--port",
            str(port),
            "--peers",
            peers,
            "--insecure",
            "--drain-seconds",
            "0.3",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("WSOP_SECRET",)},
    )
    try:
        wait_healthy(port)

        async def scenario() -> list[int | None]:
            clients = [
                await connect(f"ws://127.0.0.1:{port}/ws?tenant=t&user={u}", proxy=None)
                for u in range(4)
            ]
            for ws in clients:
                await ws.send("x")
                await ws.recv()
            proc.send_signal(signal.SIGTERM)
            for ws in clients:
                await ws.wait_closed()
            return [ws.close_code for ws in clients]

        assert asyncio.run(scenario()) == [1012] * 4
        assert proc.wait(10) == 0
        assert "WARNING" in proc.stderr.read() if proc.stderr else False
    finally:
        stop(proc)


def test_lb_command_bad_input() -> None:
    result = run_wsop("lb", "--peers", "s0=ws://127.0.0.1:1", "--algo", "nope", "--insecure")
    assert result.returncode == 2 and "unknown algorithm" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_wsop("lb", "--insecure")
    assert result.returncode == 2 and "--members-file" in result.stderr
    result = run_wsop("lb", "--peers", "s0=ws://h:1", env={"WSOP_SECRET": ""})
    assert result.returncode == 2 and "WSOP_SECRET" in result.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_wsop(
            "lb", "--port", str(port), "--peers", "s0=ws://h:1", "--insecure", "--algo", ALGO
        )
    assert result.returncode == 1 and str(port) in result.stderr
    assert "Traceback" not in result.stderr
