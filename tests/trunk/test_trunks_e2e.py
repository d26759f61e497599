"""Trunks end to end: a real `wsop lb --trunks 2` in front of real sidecar processes and
a real Redis. Delivery through trunks, what the LB and the sidecars report about them,
a client that stops reading on a shared trunk, a sidecar killed mid-traffic, a move."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from websockets.exceptions import ConnectionClosed

from tests.stack_helpers import (
    Sidecars,
    admin_get,
    client,
    drain,
    drain_all,
    recv_json,
    seed_tenant,
    sidecars_behind_lb,
)
from wsop.ring import build
from wsop.sidecar.delivery import MEMBERSHIP_GRACE_S


@pytest.fixture
def trunked(redis_url: str, tmp_path: Path) -> Iterator[tuple[Sidecars, int]]:
    with sidecars_behind_lb(redis_url, tmp_path, lb_args=["--trunks", "2"]) as running:
        yield running


@pytest.fixture(params=[0, 2], ids=["per-client", "trunks"])
def lb_stack(request, redis_url: str, tmp_path: Path) -> Iterator[tuple[Sidecars, int, int]]:
    """The same stack with and without trunks: (sidecars, LB port, trunks)."""
    with sidecars_behind_lb(
        redis_url, tmp_path, lb_args=["--trunks", str(request.param)]
    ) as running:
        yield (*running, request.param)


def lb_connections(port: int) -> dict:
    return json.loads(admin_get(f"http://127.0.0.1:{port}/connections"))


def sidecar_trunks(stack: Sidecars, name: str) -> dict:
    return json.loads(admin_get(stack.procs[name].url + "/connections"))["trunks"]


def test_direct_and_team_messages_are_delivered_over_trunks(
    lb_stack: tuple[Sidecars, int, int], r: redis.Redis
) -> None:
    stack, port, trunks = lb_stack
    seed_tenant(r, "A", {"eng": set(range(40))})
    seed_tenant(r, "B", {"eng": set(range(40))})
    lb = f"ws://127.0.0.1:{port}"
    users = {u: client(lb, "A", u) for u in range(40)}
    other = client(lb, "B", 1)  # same user id, other tenant: sees nothing of A's
    time.sleep(MEMBERSHIP_GRACE_S)
    users[0].send(json.dumps({"type": "direct", "to": 7, "data": "hi", "id": "d"}))
    assert recv_json(users[0]) == {"type": "ack", "id": "d", "delivered": 1}
    assert recv_json(users[7])["data"] == "hi"
    for i in range(20):
        users[3].send(json.dumps({"type": "team", "teams": ["eng"], "data": i, "id": f"t{i}"}))
    frames = dict(zip(users, drain_all(users.values(), 0.5), strict=True))
    acks = [f for f in frames[3] if f["type"] == "ack"]
    assert sorted(a["id"] for a in acks) == sorted(f"t{i}" for i in range(20))
    assert all(a["delivered"] == 40 and "undelivered" not in a for a in acks), acks[:3]
    for u, got in frames.items():  # every member, the sender's own connection too
        assert [f["data"] for f in got if f["type"] == "message"] == list(range(20)), u
    assert drain(other, 0.2) == []
    if not trunks:
        assert "trunks" not in lb_connections(port)
        assert all(sidecar_trunks(stack, name)["channels_opened"] == 0 for name in stack.procs)
        return
    # the legs went over trunks: at most 2 per sidecar, no leg dialled directly
    report = lb_connections(port)["trunks"]
    assert report["fallbacks"] == 0 and report["errors"] == 0
    assert report["channels_opened"] == 41
    assert all(1 <= n <= 2 for n in report["up"].values()) and len(report["up"]) == 2
    # a team message leaves a sidecar as a few writes, not one per recipient
    sent = sum(sidecar_trunks(stack, name)["data_out"] for name in stack.procs)
    writes = sum(sidecar_trunks(stack, name)["writes"] for name in stack.procs)
    assert writes < sent / 3, (writes, sent)
    # the same counters on /metrics (the LB's with its own prefix)
    lb_metrics = admin_get(f"http://127.0.0.1:{port}/metrics").decode()
    assert f"wsop_lb_trunks_channels_opened_total {float(report['channels_opened'])}" in lb_metrics
    assert f"wsop_lb_trunks_open {float(report['open'])}" in lb_metrics
    for name in stack.procs:
        counts = sidecar_trunks(stack, name)
        scraped = admin_get(stack.procs[name].url + "/metrics").decode()
        written = re.search(r"^wsop_trunks_writes_total (\S+)$", scraped, re.M)
        assert written and float(written[1]) >= counts["writes"] > 0, scraped[-500:]
    for ws in (*users.values(), other):
        ws.close()


def stalled_client(port: int, tenant: str, user: int) -> socket.socket:
    """A client behind the LB that completes its handshake and never reads again."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    key = base64.b64encode(b"0123456789abcdef").decode()
    raw.sendall(
        (
            f"GET /ws?tenant={tenant}&user={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert raw.recv(4096).startswith(b"HTTP/1.1 101")
    return raw


def test_a_client_that_stops_reading_does_not_stall_its_trunk(
    trunked: tuple[Sidecars, int], r: redis.Redis
) -> None:
    """Deliveries to a stalled client fill its own LB buffer, then its channel's credit,
    then its session's buffer on the sidecar — where the slow-client policy closes it —
    while every other client on the same trunk gets every message at once."""
    stack, port = trunked
    seed_tenant(r, "A", {"eng": set(range(10))})
    lb = f"ws://127.0.0.1:{port}"
    stalled = stalled_client(port, "A", 9)
    others = {u: client(lb, "A", u) for u in range(1, 9)}
    time.sleep(MEMBERSHIP_GRACE_S)
    blob = "x" * 30_000
    started = time.monotonic()
    for i in range(200):  # 6 MB to the stalled client: far past every buffer on its way
        others[1].send(json.dumps({"type": "team", "teams": ["eng"], "data": [i, blob]}))
        for u in range(2, 9):  # everyone else gets each one before the next is sent
            frame = recv_json(others[u])
            assert frame["type"] == "message" and frame["data"][0] == i
    assert (
        time.monotonic() - started < 60
    )  # (a stall would be the 10 s slow-client grace per message; and the sender, which
    # reads nothing here, must not be closed as slow before the loop ends: keep 10 s)
    deadline = time.monotonic() + 45
    closed = False
    while time.monotonic() < deadline and not closed:
        time.sleep(0.5)
        # closed by the slow-client policy, or — on a machine so busy that the sends
        # above took over a keepalive interval — by the keepalive sweep first (it never
        # answers a ping either): either way the sidecar let it go
        closed = any(
            "wsop_slow_clients_closed_total 1.0" in admin_get_text(stack, name)
            for name in stack.procs
        ) or not any(
            u["tenant"] == "A" and u["user"] == 9
            for name in stack.procs
            for u in json.loads(admin_get(stack.procs[name].url + "/connections"))["users"]
        )
    assert closed, "the stalled client was never closed (as too slow, or by the keepalive)"
    others[2].send(json.dumps({"type": "direct", "to": 3, "data": "after", "id": "z"}))
    assert recv_json(others[3])["data"] == "after"
    assert lb_connections(port)["trunks"]["errors"] == 0
    for ws in others.values():
        ws.close()
    stalled.close()


def admin_get_text(stack: Sidecars, name: str) -> str:
    return admin_get(stack.procs[name].url + "/metrics").decode()


def test_a_sidecar_killed_mid_traffic_closes_its_clients_1012(
    trunked: tuple[Sidecars, int], r: redis.Redis
) -> None:
    stack, port = trunked
    seed_tenant(r, "A", {"eng": set(range(20))})
    ring = build("rendezvous", sorted(stack.procs))
    lb = f"ws://127.0.0.1:{port}"
    users = {u: client(lb, "A", u) for u in range(20)}
    on = {u: ring.owner(("A", u)) for u in users}
    time.sleep(MEMBERSHIP_GRACE_S)
    for i in range(5):
        users[0].send(json.dumps({"type": "team", "teams": ["eng"], "data": i}))
    stack.procs["s1"].proc.kill()
    for u, ws in users.items():
        if on[u] != "s1":
            continue
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, u
    # the clients of s0 stay connected and keep working over their trunk
    alive = [u for u in users if on[u] == "s0"]
    assert len(alive) >= 2
    drain(users[alive[1]], 0.3)
    users[alive[0]].send(json.dumps({"type": "direct", "to": alive[1], "data": "ok"}))
    frames = [f for f in drain(users[alive[1]], 1.0) if f["type"] == "message"]
    assert [f["data"] for f in frames] == ["ok"]
    for u in alive:
        users[u].close()


def test_a_move_through_trunks_loses_nothing(
    lb_stack: tuple[Sidecars, int, int], r: redis.Redis
) -> None:
    """The owner asks the LB to move a user (`/move`) while messages to it flow: the LB
    opens the leg on the new sidecar's trunk and switches at a message boundary; every
    message is acked delivered and arrives exactly once."""
    stack, port, trunks = lb_stack
    seed_tenant(r, "A", {"eng": set(range(10))})
    ring = build("rendezvous", sorted(stack.procs))
    target = next(u for u in range(1, 100) if ring.owner(("A", u)) == "s0")
    lb = f"ws://127.0.0.1:{port}"
    sender, receiver = client(lb, "A", 0), client(lb, "A", target)
    time.sleep(MEMBERSHIP_GRACE_S)
    for i in range(150):
        if i == 50:
            moved = admin_get(f"{stack.procs['s0'].url}/move?tenant=A&user={target}&to=s1")
            assert json.loads(moved) == {"moved": 1}
        sender.send(json.dumps({"type": "direct", "to": target, "data": i, "id": str(i)}))
        ack = recv_json(sender)
        assert (ack["id"], ack["delivered"], ack.get("undelivered", 0)) == (str(i), 1, 0)
        time.sleep(0.005)
    got = [f["data"] for f in drain(receiver, 1.0) if f["type"] == "message"]
    assert sorted(got) == list(range(150)) and len(got) == 150
    per_sidecar = {s["name"]: s["connections"] for s in lb_connections(port)["sidecars"]}
    assert per_sidecar["s1"] >= 1  # the receiver is held by s1 now
    if trunks:
        report = lb_connections(port)["trunks"]
        assert report["channels_opened"] == 3 and report["fallbacks"] == 0
    sender.close()
    receiver.close()


def open_raw_trunk(port: int, token: str | None) -> tuple[socket.socket, bytes]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(b"0123456789abcdef").decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    raw.sendall(
        (
            "GET /trunk?from=evil HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{auth}"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = raw.recv(4096)
        if not chunk:
            break
        head += chunk
    return raw, head


def read_all(raw: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := raw.recv(65536):
            out += chunk
    except OSError:
        pass
    return out


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x63" + b"\x00" * 8,  # an unknown record type
        b"\x02\x00\x00\x00\x07\x00\x00\x00\x01x",  # DATA on a channel never opened
        b"\x01\x00\x00\x00\x01\x00\x00\x00\x00" * 2,  # the same channel opened twice
        b"\x02\x00\x00\x00\x00\x00\x00\x00\x01x",  # DATA on channel 0
    ],
    ids=["unknown-type", "unopened-channel", "reopened", "data-on-0"],
)
def test_a_malformed_trunk_is_closed_counted_and_the_sidecar_carries_on(
    redis_url: str, tmp_path: Path, r: redis.Redis, garbage: bytes
) -> None:
    from tests.stack_helpers import ADMIN_TOKEN

    stack = Sidecars(redis_url, tmp_path / "members.json", {})
    try:
        stack.write_members()
        proc = stack.start("s0", tmp_path)
        _, head = open_raw_trunk(proc.port, None)
        assert head.startswith(b"HTTP/1.1 401")  # a trunk needs the admin token
        raw, head = open_raw_trunk(proc.port, ADMIN_TOKEN)
        assert head.startswith(b"HTTP/1.1 101")
        raw.sendall(garbage)
        answer = read_all(raw)  # a GOAWAY naming the fault, then the socket closes
        assert answer[:1] == b"\x08" and b"protocol error" in answer, answer
        raw.close()
        trunks = json.loads(admin_get(proc.url + "/connections"))["trunks"]
        assert trunks["errors"] == 1 and trunks["open"] == 0
        seed_tenant(r, "A", {"eng": {1, 2}})
        ws = client(proc.url, "A", 1)  # still serving
        ws.send(json.dumps({"type": "direct", "to": 1, "data": "x", "id": "1"}))
        assert {f["type"] for f in (recv_json(ws), recv_json(ws))} == {"ack", "message"}
        ws.close()
    finally:
        stack.stop_all()
