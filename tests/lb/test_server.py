"""`wsop lb` against stand-in sidecars (real processes on loopback, tests/standin_sidecar.py).

The LB runs in-process for most tests (fast, and its relays are reachable for the
`switch_to` seam); a few run the real `wsop lb` command for signals and exit codes.
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
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import ROOT, run_wsop
from tests.lb.helpers import (
    ADMIN,
    ALGO,
    aget,
    dial,
    running_lb,
    start_standin,
    stop,
    token,
    wait_healthy,
    ws_url,
)
from wsop.auth import mint_token
from wsop.discovery import Members, RegistryFileMembership, StaticMembership
from wsop.errors import WsopError
from wsop.lb import Relay
from wsop.lb.handshake import LBServerConnection
from wsop.local.redis_binary import free_port
from wsop.ring import DEFAULT_ALGORITHM, build

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
async def test_routes_to_ring_owner_and_forwards_credentials(
    standins: Members, algo: str, trunks: int
) -> None:
    ring = build(algo, list(standins))
    async with running_lb(StaticMembership(standins), algo=algo, trunks=trunks) as lb:
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
async def test_relays_text_and_bytes_both_ways(standins: Members, trunks: int) -> None:
    async with running_lb(StaticMembership(standins), trunks=trunks) as lb, await dial(lb) as ws:
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
async def test_upstream_close_code_reaches_client(standins: Members, trunks: int) -> None:
    async with running_lb(StaticMembership(standins), trunks=trunks) as lb:
        ws = await dial(lb)
        await ws.send("close:4001")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4001, "bye")
        await asyncio.sleep(0.05)
        assert lb.stats.connections == 0


@pytest.mark.asyncio
async def test_vanished_sidecar_closes_1012(trunks: int) -> None:
    proc, url = start_standin("s0")
    try:
        async with running_lb(StaticMembership({"s0": url}), trunks=trunks) as lb:
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
    standins: Members, trunks: int
) -> None:
    """The sidecar leg is dialled before the client's 101: no leg, no WebSocket."""
    async with running_lb(StaticMembership({}), trunks=trunks) as lb:
        with pytest.raises(InvalidStatus) as refused:
            await dial(lb)
        assert refused.value.response.status_code == 503
        assert b"no sidecars available" in refused.value.response.body
    dead = f"ws://127.0.0.1:{free_port()}"
    async with running_lb(StaticMembership({"s9": dead}), trunks=trunks) as lb:
        with pytest.raises(InvalidStatus) as refused:
            await dial(lb)
        assert refused.value.response.status_code == 503
        assert b"sidecar s9 unavailable" in refused.value.response.body
        assert lb.stats.upstream_failures["connect"] == 1  # one dial: no direct retry


@pytest.mark.asyncio
async def test_a_leg_no_relay_took_is_closed_when_its_client_goes(
    standins: Members, trunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """websockets skips the handler when the client resets while its 101 is written; the
    leg dialled for it must not stay open (a ghost the sidecar counts as online, acked as
    delivered) until the sidecar's keepalive gives up. Here the handler never takes it."""
    from websockets.protocol import State

    from wsop.lb.server import LoadBalancer

    async def skipped(self: LoadBalancer, connection: LBServerConnection) -> None:
        await asyncio.sleep(0)

    monkeypatch.setattr(LoadBalancer, "handler", skipped)
    async with running_lb(StaticMembership(standins), trunks=trunks) as lb:
        ws = await dial(lb)
        (leg,) = lb._legs.values()
        assert leg.upstream.state is State.OPEN
        ws.transport.abort()
        for _ in range(60):
            if leg.upstream.state is State.CLOSED:
                break
            await asyncio.sleep(0.05)
        assert leg.upstream.state is State.CLOSED  # at once, not after a keepalive
        assert lb.stats.orphaned_legs == 1 and not lb._legs


@pytest.mark.asyncio
async def test_a_sidecar_without_trunks_gets_one_connection_per_client() -> None:
    """A sidecar from before trunks answers /trunk with 404: the LB dials its clients'
    legs directly (and tries a trunk again only after `RETRY_S`)."""
    proc, url = start_standin("s0", trunks=False)
    try:
        async with running_lb(StaticMembership({"s0": url}), trunks=2) as lb:
            for user in range(3):
                async with await dial(lb, user=user) as ws:
                    await ws.send("x")
                    assert await ws.recv() == "s0:x"
            assert lb.trunks is not None
            assert (lb.trunks.dial_failures, lb.trunks.fallbacks) == (1, 3)
            assert lb.trunks.stats.channels_opened == 0 and lb.stats.accepted == 3
    finally:
        stop(proc)


@pytest.mark.asyncio
async def test_a_sidecar_refusal_is_the_client_handshake_answer(
    standins: Members, trunks: int
) -> None:
    async with running_lb(StaticMembership(standins), trunks=trunks) as lb:
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(lb, f"?reject=403&token={token('acme', 1)}"), proxy=None)
        assert refused.value.response.status_code == 403
        assert refused.value.response.body.endswith(b"refused: rejected by stand-in\n")
        assert lb.stats.upstream_failures["http_403"] == 1


@pytest.mark.asyncio
async def test_a_move_the_new_sidecar_refuses_keeps_the_client_where_it_was(
    standins: Members, trunks: int
) -> None:
    """The new sidecar answers the move's handshake with 503: the LB keeps the client on
    the old one (a sidecar that cannot take a client refuses before the 101)."""
    async with running_lb(StaticMembership(standins), trunks=trunks) as lb:
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
async def test_relay_switch_to_moves_a_live_client(standins: Members, trunks: int) -> None:
    async with (
        running_lb(StaticMembership(standins), trunks=trunks) as lb,
        await dial(lb, user=9) as ws,
    ):
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
async def test_misplaced_relays_follow_the_ring(
    tmp_path: Path, standins: Members, trunks: int
) -> None:
    path = tmp_path / "stack.json"

    def write(names: list[str]) -> None:
        doc = {"sidecars": [{"name": n, "url": standins[n], "pid": 0} for n in names]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    write(["s0"])
    async with running_lb(RegistryFileMembership(path, interval=0.02), trunks=trunks) as lb:
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
async def test_sidecar_move_frame_switches_the_client(standins: Members, trunks: int) -> None:
    ring = build(ALGO, list(standins))
    user = next(u for u in range(100) if ring.owner(("acme", u)) == "s0")
    async with running_lb(StaticMembership(standins), trunks=trunks) as lb:
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
    for bad in ("-1", "65", "two"):
        result = run_wsop("lb", "--peers", "s0=ws://h:1", "--insecure", "--trunks", bad)
        assert result.returncode == 2 and "--trunks" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
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


@pytest.mark.asyncio
async def test_raw_relay_end_to_end_pings_large_messages_backpressure(
    standins: Members, trunks: int
) -> None:
    async with (
        running_lb(StaticMembership(standins), trunks=trunks) as lb,
        await dial(lb, user=4) as ws,
    ):
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
