"""`wsop lb` against stand-in sidecars (real processes on loopback, tests/standin_sidecar.py).

The LB runs in-process for most tests (fast, and its relays are reachable for the
`switch_to` seam); one test runs the real `wsop lb` command for signals and exit codes.
"""

from __future__ import annotations

import asyncio
import gc
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close, Frame, Opcode

from tests.conftest import ROOT, run_wsop
from wsop.auth import mint_token
from wsop.discovery import Members, RegistryFileMembership, StaticMembership
from wsop.errors import WsopError
from wsop.lb import LBConfig, LoadBalancer, Relay
from wsop.lb.frames import FrameScanner, close_frame, parse_close, text_frame
from wsop.lb.handshake import LBServerConnection
from wsop.lb.stats import LBStats
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
async def test_no_sidecar_or_an_unreachable_one_is_a_503_at_the_handshake(
    standins: Members,
) -> None:
    """The sidecar leg is dialled before the client's 101: no leg, no WebSocket."""
    async with running_lb(StaticMembership({})) as lb:
        with pytest.raises(InvalidStatus) as refused:
            await dial(lb)
        assert refused.value.response.status_code == 503
        assert b"no sidecars available" in refused.value.response.body
    dead = f"ws://127.0.0.1:{free_port()}"
    async with running_lb(StaticMembership({"s9": dead})) as lb:
        with pytest.raises(InvalidStatus) as refused:
            await dial(lb)
        assert refused.value.response.status_code == 503
        assert b"sidecar s9 unavailable" in refused.value.response.body
        assert lb.stats.upstream_failures["connect"] == 1


@pytest.mark.asyncio
async def test_a_sidecar_refusal_is_the_client_handshake_answer(standins: Members) -> None:
    async with running_lb(StaticMembership(standins)) as lb:
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(lb, f"?reject=403&token={token('acme', 1)}"), proxy=None)
        assert refused.value.response.status_code == 403
        assert refused.value.response.body.endswith(b"refused: rejected by stand-in\n")
        assert lb.stats.upstream_failures["http_403"] == 1


@pytest.mark.asyncio
async def test_a_move_the_new_sidecar_refuses_keeps_the_client_where_it_was(
    standins: Members,
) -> None:
    """The new sidecar answers the move's handshake with 503: the LB keeps the client on
    the old one (a sidecar that cannot take a client refuses before the 101)."""
    async with running_lb(StaticMembership(standins)) as lb:
        query = f"?reject_moved=503&token={token('acme', 9)}"
        async with await connect(ws_url(lb, query), proxy=None) as ws:
            await ws.send("a")
            first = (await ws.recv()).split(":")[0]
            (relay,) = lb.relays
            target = next(n for n in standins if n != first)
            with pytest.raises(InvalidStatus):
                await relay.switch_to(target, standins[target])
            await ws.send("b")
            assert await ws.recv() == f"{first}:b"
            assert relay.owner == first and not relay.finished


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
    with pytest.raises(WsopError, match="admin token"):  # closed by default
        async with running_lb(StaticMembership(standins), admin_token=None):
            pass


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
    ring = build(ALGO, list(standins))
    user = next(u for u in range(100) if ring.owner(("acme", u)) == "s0")
    async with running_lb(StaticMembership(standins)) as lb:
        query = f"?moved_from=evil&x=1&token={token('acme', user)}"
        ws = await connect(ws_url(lb, query), proxy=None)
        await ws.send("whoami")
        info = json.loads(await ws.recv())
        assert info["sidecar"] == "s0" and "moved_from" not in info["path"]  # stripped
        assert info["lb"].split(" ")[2] == "-"  # signed by the LB: not moved
        await ws.send(f"sendmove:s2 {standins['s2']}")
        for _ in range(100):
            if lb.relays and next(iter(lb.relays)).owner == "s2":
                break
            await asyncio.sleep(0.02)
        await ws.send("whoami")
        info = json.loads(await ws.recv())  # the control frame never reached the client
        assert info["sidecar"] == "s2" and info["lb"].split(" ")[2] == "s0"  # moved from s0
        assert dict(lb.stats.per_sidecar) == {"s2": 1}
        # a move to a sidecar the LB does not know is refused: the LB never dials a URL
        # a frame names (that chain once let an attacker's server talk to a victim)
        await ws.send(f"sendmove:s9 ws://127.0.0.1:{free_port()}")
        await ws.send(f"sendmove:s1 ws://127.0.0.1:{free_port()}")  # a member, wrong url
        for _ in range(100):
            if lb.stats.refused["move_to_non_member"] == 2:
                break
            await asyncio.sleep(0.02)
        assert lb.stats.refused["move_to_non_member"] == 2
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
        env={
            **{k: v for k, v in os.environ.items() if k not in ("WSOP_SECRET",)},
            "WSOP_ADMIN_TOKEN": ADMIN,
        },
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
    result = run_wsop("lb", "--peers", "s0=ws://h:1", "--insecure", env={"WSOP_ADMIN_TOKEN": ""})
    assert result.returncode == 2 and "needs WSOP_ADMIN_TOKEN" in result.stderr  # even insecure
    assert "Traceback" not in result.stderr
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


# --- the raw relay's frame scanner (pure) -----------------------------------------------


class Recorder(FrameScanner):
    """Emits into a buffer and records what the hooks saw; asks for every boundary."""

    def __init__(self, intercept: bool) -> None:
        super().__init__(intercept)
        self.out = bytearray()
        self.controls: list[bytes] = []
        self.closes: list[bytes] = []
        self.boundaries: set[int] = set()
        self.want_boundary = True

    def emit(self, chunk: bytes) -> None:
        self.out += chunk

    def on_close(self, frame: bytes, payload: bytes) -> None:
        self.closes.append(payload)
        self.out += frame  # what a relay does with a close frame it forwards

    def on_control(self, payload: bytes) -> None:
        self.controls.append(payload)

    def on_boundary(self) -> None:
        self.boundaries.add(len(self.out))


LENGTHS = st.one_of(
    st.integers(0, 125),
    st.integers(126, 400),  # 16-bit length
    st.sampled_from([65535, 65536, 65537]),  # the 16/64-bit edge and 64-bit lengths
)


def payload(length: int, first: int = 7) -> bytes:
    return bytes([first]) + bytes(length - 1) if length else b""


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[bool, list[tuple[bytes, str, bytes]], list[int]]:
    """(masked, [(frame bytes, kind, detail)], chunk cut points) for a valid stream."""
    masked = draw(st.booleans())
    frames: list[tuple[bytes, str, bytes]] = []

    def add(op: Opcode, data: bytes, fin: bool, kind: str, detail: bytes = b"") -> None:
        frame = Frame(op, data, fin=fin).serialize(mask=masked, extensions=[])
        frames.append((frame, kind, detail))

    for _ in range(draw(st.integers(0, 6))):
        unit = draw(st.sampled_from(["text", "binary", "fragmented", "ping", "nul", "close"]))
        if unit in ("text", "binary"):
            op = Opcode.TEXT if unit == "text" else Opcode.BINARY
            first = 7 if unit == "text" else draw(st.integers(0, 255))
            add(op, payload(draw(LENGTHS), first), True, "fin")
        elif unit == "fragmented":  # a NUL first byte in a fragment is just data
            add(Opcode.TEXT, payload(draw(LENGTHS), 0), False, "nofin")
            for last in [False] * draw(st.integers(0, 2)) + [True]:
                if draw(st.booleans()):
                    add(Opcode.PING, b"p", True, "ctrl")  # control frames may interleave
                add(Opcode.CONT, payload(draw(LENGTHS)), last, "fin" if last else "nofin")
        elif unit == "ping":
            add(draw(st.sampled_from([Opcode.PING, Opcode.PONG])), b"x" * 5, True, "ctrl")
        elif unit == "nul":
            text = "\x00wsop:move s1 ws://h:1" + "x" * draw(st.integers(0, 300))
            add(Opcode.TEXT, text.encode(), True, "nul", text.encode())
        else:
            body = Close(draw(st.sampled_from([1000, 1012, 4001])), "bye").serialize()
            add(Opcode.CLOSE, body, True, "close", body)
    total = sum(len(f) for f, _, _ in frames)
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=12)))
    return masked, frames, cuts


@given(frame_streams(), st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_scanner_finds_frames_in_any_chunking(
    stream: tuple[bool, list[tuple[bytes, str, bytes]], list[int]], intercept: bool
) -> None:
    masked, frames, cuts = stream
    data = b"".join(f for f, _, _ in frames)
    emitted, boundaries, in_message, messages = bytearray(), {0}, False, 0
    controls, closes = [], []
    for frame, kind, detail in frames:
        if kind == "nul" and intercept:
            controls.append(detail)
            continue
        emitted += frame
        if kind in ("fin", "nul"):
            messages, in_message = messages + 1, False
        elif kind == "nofin":
            in_message = True
        elif kind == "close":
            closes.append(detail)
        if not in_message:
            boundaries.add(len(emitted))
    scanner = Recorder(intercept)
    counted = 0
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        counted += scanner.feed(data[start:end])
        # what went out always stops at a header boundary or inside an emitted payload
        assert scanner.held == b"" or len(scanner.held) < 14 + 65537 + 400
    assert bytes(scanner.out) == bytes(emitted)
    assert scanner.controls == controls and scanner.closes == closes
    assert counted == messages
    assert scanner.boundaries == boundaries
    assert scanner.held == b"" and scanner.skip == 0 and scanner.at_boundary == (not in_message)


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("masked", [False, True])
def test_scanner_header_lengths_byte_by_byte(length: int, masked: bool) -> None:
    frame = Frame(Opcode.BINARY, payload(length), fin=True).serialize(mask=masked, extensions=[])
    head = 2 + (2 if 126 <= length < 65536 else 8 if length >= 65536 else 0) + 4 * masked
    scanner = Recorder(intercept=True)
    counted = 0
    for i in range(head):  # the header, one byte at a time: held back until complete
        counted += scanner.feed(frame[i : i + 1])
        assert len(scanner.out) == (head if i == head - 1 else 0)
    assert counted == 1  # a message counts when its final frame's header is read
    assert scanner.skip == length and scanner.at_boundary == (length == 0)
    assert scanner.feed(frame[head:]) == 0
    assert bytes(scanner.out) == frame and scanner.at_boundary and scanner.skip == 0


def test_scanner_intercepts_only_whole_unfragmented_nul_text() -> None:
    move = text_frame("\x00wsop:move s1 ws://h:1", mask=False)
    normal = text_frame('{"a":1}', mask=False)
    binary_nul = Frame(Opcode.BINARY, b"\x00x").serialize(mask=False, extensions=[])
    stream = normal + move + binary_nul + move + normal
    scanner = Recorder(intercept=True)
    for i in range(len(stream)):  # worst case: one byte per read
        scanner.feed(stream[i : i + 1])
    assert scanner.controls == [b"\x00wsop:move s1 ws://h:1"] * 2
    assert bytes(scanner.out) == normal + binary_nul + normal
    off = Recorder(intercept=False)
    assert off.feed(stream) == 5 and bytes(off.out) == stream and off.controls == []


def test_close_frames_the_lb_writes() -> None:
    unmasked = close_frame(1012, "sidecar went away", mask=False)
    assert unmasked[:2] == b"\x88\x13" and parse_close(unmasked[2:]) == (1012, "sidecar went away")
    scanner = Recorder(intercept=False)
    scanner.feed(close_frame(4001, "bye", mask=True))  # masked: the scanner unmasks it
    assert [parse_close(p) for p in scanner.closes] == [(4001, "bye")]
    assert parse_close(b"") == (None, "")


# --- the raw relay on fake transports (control frames, switching, splicing, closes) -----


class FakeTransport:
    """Records writes; close/abort report connection_lost to the protocol, like asyncio."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False
        self.reading = True
        self.protocol: asyncio.Protocol | None = None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class FakeConn:
    """A handshaken connection as `wsop.lb.handshake` leaves it: ready to `detach`."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.closed_with: tuple[int, str] | None = None

    def attach(self, protocol: asyncio.Protocol) -> None:
        self.transport.protocol = protocol
        protocol.connection_made(self.transport)  # type: ignore[arg-type]

    def replay(self) -> None:
        pass

    detach = attach

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def unmasked_texts(stream: bytes) -> list[str]:
    """The text frames in a stream of masked client frames, unmasked."""
    from wsop.load.frames import OP_TEXT, FrameReader

    return [p.decode() for op, p in FrameReader().feed(stream) if op == OP_TEXT]


def masked(text: str) -> bytes:
    return text_frame(text, mask=True)


def plain(text: str) -> bytes:
    return text_frame(text, mask=False)


class Dialled(list[tuple[str, str | None]]):
    """(url, moved_from) per dial, and the connection each dial returned, by url."""

    conns: dict[str, FakeConn]


def fake_relay(**kw) -> tuple[Relay, FakeConn, FakeConn, Dialled]:
    client, upstream, dialled = FakeConn(), FakeConn(), Dialled()
    dialled.conns = {}

    async def dial(url: str, moved_from: str | None) -> FakeConn:
        dialled.append((url, moved_from))
        dialled.conns[url] = conn = FakeConn()
        return conn

    relay = Relay(client, upstream, "s0", dial, LBStats(), ("acme", 1), 0.2, **kw)  # type: ignore[arg-type]
    relay.start()
    return relay, client, upstream, dialled


@pytest.mark.asyncio
async def test_relay_takes_control_frames_out_of_the_stream() -> None:
    relay, client, upstream, dialled = fake_relay()
    hello = masked("hello")
    relay.client.data_received(hello)
    assert bytes(upstream.transport.written) == hello  # masked bytes pass through unchanged
    move = plain("\x00wsop:move s1 ws://127.0.0.1:9")
    # one read: a message, an unknown control frame, a message, half of a move frame
    chunk = plain("a") + plain("\x00wsop:nonsense") + plain("b") + move[:5]
    relay.upstream.data_received(chunk)
    assert bytes(client.transport.written) == plain("a") + plain("b")
    relay.upstream.data_received(move[5:] + plain("c"))
    assert bytes(client.transport.written) == plain("a") + plain("b") + plain("c")
    for _ in range(5):
        await asyncio.sleep(0)
    assert dialled == [("ws://127.0.0.1:9", "s0")] and relay.owner == "s1"
    assert relay.stats.upstream_to_client == 3 and relay.stats.client_to_upstream == 1
    new = dialled.conns["ws://127.0.0.1:9"]
    nxt = masked("next")
    relay.client.data_received(nxt)
    assert bytes(new.transport.written) == nxt
    # the old sidecar was told its client moved away (a masked control frame, after hello)
    assert bytes(upstream.transport.written)[: len(hello)] == hello
    assert unmasked_texts(bytes(upstream.transport.written)[len(hello) :]) == ["\x00wsop:moved"]
    # a move frame from the draining old upstream is ignored
    old = next(iter(relay.draining))
    old.data_received(plain("\x00wsop:move s2 ws://127.0.0.1:8"))
    await asyncio.sleep(0)
    assert len(dialled) == 1


@pytest.mark.asyncio
async def test_switch_waits_for_the_client_message_boundary() -> None:
    relay, client, upstream, dialled = fake_relay()
    big = Frame(Opcode.BINARY, b"x" * 1000).serialize(mask=True, extensions=[])
    relay.client.data_received(big[:300])  # half a message is on its way to s0
    switch = asyncio.ensure_future(relay.switch_to("s1", "ws://s1"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not switch.done() and relay.owner == "s0"  # dialled, waiting for the boundary
    after = masked("after")
    relay.client.data_received(big[300:] + after)
    await switch
    new = dialled.conns["ws://s1"]
    written = bytes(upstream.transport.written)
    assert written[: len(big)] == big  # the whole message went to s0, then the news
    assert unmasked_texts(written[len(big) :]) == ["\x00wsop:moved"]
    assert bytes(new.transport.written) == after and relay.owner == "s1"
    # the old upstream drains; if its sidecar does not close it, the LB does after drain_s:
    # 1000 "moved" (masked: we are its client)
    await asyncio.sleep(0.25)
    old_side = next(iter(relay.draining))
    frame = bytes(upstream.transport.written[len(written) :])
    scanner = Recorder(intercept=False)
    scanner.feed(frame)
    assert [parse_close(p) for p in scanner.closes] == [(1000, "moved")] and frame[1] & 0x80
    old_side.data_received(close_frame(1000, "moved", mask=False))  # its answer: not forwarded
    assert b"moved" not in client.transport.written


@pytest.mark.asyncio
async def test_two_upstreams_splice_only_between_messages() -> None:
    relay, client, upstream, _ = fake_relay()
    await relay.switch_to("s1", "ws://s1")
    old, new = next(iter(relay.draining)), relay.upstream
    long = Frame(Opcode.TEXT, b"o" * 500).serialize(mask=False, extensions=[])
    old.data_received(long[:100])  # the old sidecar is mid-message
    new.data_received(plain("n1") + plain("n2"))  # must wait: not inside the old message
    assert bytes(client.transport.written) == long[:100]
    old.data_received(long[100:] + plain("o2"))
    assert bytes(client.transport.written) == long + plain("o2") + plain("n1") + plain("n2")
    assert relay.writer is None and relay.stats.upstream_to_client == 4


@pytest.mark.asyncio
async def test_close_frames_pass_end_to_end_and_vanished_sidecar_is_1012() -> None:
    done: list[Relay] = []
    relay, client, upstream, _ = fake_relay(on_done=done.append)
    relay.upstream.data_received(close_frame(4001, "bye", mask=False))
    assert bytes(client.transport.written) == close_frame(4001, "bye", mask=False)
    reply = close_frame(4001, "bye", mask=True)
    relay.client.data_received(reply)  # the client's answer goes to the sidecar
    assert bytes(upstream.transport.written) == reply
    assert client.transport.closing  # handshake done both ways: the LB closes the client
    upstream.transport.close()  # the sidecar closes its socket
    await asyncio.sleep(0)
    assert done == [relay] and relay.ending == ("upstream", 4001, "bye")

    relay, client, upstream, _ = fake_relay()
    relay.client.data_received(masked("x"))
    upstream.transport.close()  # no close frame: the sidecar vanished
    await asyncio.sleep(0)
    assert bytes(client.transport.written) == close_frame(1012, "sidecar went away", mask=False)
    assert relay.stats.upstream_failures["vanished"] == 1
    relay.client.data_received(close_frame(1012, "", mask=True))
    assert client.transport.closing

    relay, client, upstream, _ = fake_relay()
    client.transport.close()  # the client vanished: the sidecar gets 1000 from the LB
    await asyncio.sleep(0)
    scanner = Recorder(intercept=False)
    scanner.feed(bytes(upstream.transport.written))
    assert [parse_close(p) for p in scanner.closes] == [(1000, "")]


@pytest.mark.asyncio
async def test_raw_relay_end_to_end_pings_large_messages_backpressure(standins: Members) -> None:
    async with running_lb(StaticMembership(standins)) as lb, await dial(lb, user=4) as ws:
        owner = build(ALGO, list(standins)).owner(("acme", 4))
        pong = await ws.ping()  # answered by the sidecar: the LB passes pings through
        await asyncio.wait_for(pong, 2)
        big = bytes(range(256)) * 1024  # 256 KiB: 64-bit lengths, many reads per frame
        count = 40  # ~10 MiB each way, sent without reading: exercises pause/resume

        async def send() -> None:
            for _ in range(count):
                await ws.send(big)

        sender = asyncio.ensure_future(send())
        for _ in range(count):
            assert await ws.recv() == owner.encode() + b":" + big
        await sender
        assert lb.stats.client_to_upstream == count and lb.stats.upstream_to_client == count
        # after the handshakes the websockets connection objects are gone: only raw sides
        gc.collect()
        assert not [o for o in gc.get_objects() if isinstance(o, LBServerConnection)]
