"""The LB answers 101 only once the client's sidecar leg exists, and what a client sends
before that is bounded (issue 10, observation 5). A real `wsop lb` process in front of
real sidecar processes."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.stack_helpers import (
    Sidecars,
    client,
    recv_json,
    seed_tenant,
    sidecars_behind_lb,
    start_lb,
    stop_process,
)
from wsop.ring import build
from wsop.sidecar.delivery import MEMBERSHIP_GRACE_S


@pytest.fixture
def lb_stack(redis_url: str, tmp_path: Path) -> Iterator[tuple[Sidecars, int]]:
    with sidecars_behind_lb(redis_url, tmp_path) as running:
        yield running


def test_a_client_is_reachable_as_soon_as_connect_returns(
    lb_stack: tuple[Sidecars, int], r: redis.Redis
) -> None:
    """It used to be acked `delivered: 0, undelivered: 1` in about half the tries at 0 ms:
    the LB answered 101 before dialling the client's sidecar."""
    stack, port = lb_stack
    seed_tenant(r, "A", {"eng": set(range(100))})
    ring = build("rendezvous", sorted(stack.procs))
    lb = f"ws://127.0.0.1:{port}"
    sender = client(lb, "A", 0)
    time.sleep(MEMBERSHIP_GRACE_S)  # past it, an unknown recipient is reported at once
    # on the sender's own sidecar: the shortest path, the one that used to win the race
    others = [u for u in range(1, 100) if ring.owner(("A", u)) == ring.owner(("A", 0))][:25]
    for user in others:
        ws = client(lb, "A", user)
        sender.send(json.dumps({"type": "direct", "to": user, "data": user, "id": str(user)}))
        ack = recv_json(sender)
        assert (ack["id"], ack["delivered"], ack.get("undelivered", 0)) == (str(user), 1, 0)
        assert recv_json(ws)["data"] == user
        ws.close()
    sender.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_bytes_pushed_before_the_101_are_bounded(tmp_path: Path) -> None:
    """A sidecar that accepts TCP but never answers keeps the LB dialling (5 s); a client
    that pushes 60 MB meanwhile must not grow the LB (it grew from 76 to 387 MB)."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    proc, port = start_lb(f"s0=ws://127.0.0.1:{blackhole.getsockname()[1]}", tmp_path / "lb.log")
    try:
        time.sleep(0.3)
        before = rss_kb(proc.pid)
        raw = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(b"0123456789abcdef").decode()
        raw.sendall(
            (
                "GET /ws?tenant=A&user=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        pushed = [0]

        def push() -> None:
            chunk = b"\x82\xfe\xff\xf0" + b"\x00" * 65520
            raw.settimeout(4)
            try:
                while pushed[0] < 60 * 1024 * 1024:
                    raw.sendall(chunk)
                    pushed[0] += len(chunk)
            except OSError:
                pass  # blocked: the LB stopped reading

        pusher = threading.Thread(target=push)
        pusher.start()
        pusher.join(6)
        grown = rss_kb(proc.pid) - before
        assert grown < 16 * 1024, f"LB grew by {grown} KB while {pushed[0]} bytes were pushed"
        raw.close()
        assert proc.poll() is None  # and it is still serving
    finally:
        stop_process(proc)
        blackhole.close()


def test_a_client_that_resets_during_its_handshake_leaves_no_ghost_leg(
    lb_stack: tuple[Sidecars, int], r: redis.Redis, tmp_path: Path
) -> None:
    """A client that resets its socket while the LB dials its sidecar (or sends its 101)
    never reaches websockets' handler; its sidecar leg used to stay open until the
    keepalive gave up (~40 s): the user online, counted in its quota, and direct messages
    to it acked `delivered: 1` to nobody. The LB logged a traceback for each, too."""
    import random
    import struct

    stack, port = lb_stack
    seed_tenant(r, "A", {"eng": {1, 2}})
    key = base64.b64encode(b"0123456789abcdef").decode()
    request = (
        f"GET /ws?tenant=A&user=2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    rng = random.Random(7)

    def reset_after(delay: float) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(request)
            time.sleep(delay)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    for _ in range(4):  # concurrency is what opens the window: 30 at a time did not
        resets = [
            threading.Thread(target=reset_after, args=(rng.random() * 0.3,)) for _ in range(120)
        ]
        for t in resets:
            t.start()
        for t in resets:
            t.join()
    sender = client(f"ws://127.0.0.1:{port}", "A", 1)
    deadline, ack = time.monotonic() + 8, {}
    while time.monotonic() < deadline:  # every leg closes within moments, not a minute
        sender.send(json.dumps({"type": "direct", "to": 2, "data": "x", "id": "g"}))
        ack = recv_json(sender)
        if ack.get("delivered") == 0:
            break
        time.sleep(0.5)
    assert (ack["delivered"], ack.get("undelivered")) == (0, 1), ack
    sender.close()
    log = (tmp_path / "lb.log").read_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 200 :][:1500]


def test_a_client_cannot_forge_the_lbs_control_frame_in_another_shape(
    lb_stack: tuple[Sidecars, int], r: redis.Redis
) -> None:
    """The LB drops a client's unfragmented NUL-led text frame; the same bytes fragmented
    or binary used to pass and be obeyed by the sidecar (a forged `moved` closed the
    client 1000). Now they are what they are: invalid messages, answered `bad_request`."""
    from wsop.protocol import MOVED_FRAME

    stack, port = lb_stack
    seed_tenant(r, "A", {"eng": {1, 2}})
    ws = client(f"ws://127.0.0.1:{port}", "A", 1)
    ws.send([MOVED_FRAME[:6], MOVED_FRAME[6:]])  # one text message in two fragments
    ws.send(MOVED_FRAME.encode())  # binary
    errors = [recv_json(ws) for _ in range(2)]
    assert [(e["type"], e["code"]) for e in errors] == [("error", "bad_request")] * 2, errors
    ws.send(json.dumps({"type": "direct", "to": 1, "data": "still here", "id": "z"}))
    got = {f["type"]: f for f in (recv_json(ws), recv_json(ws))}
    assert got["ack"]["delivered"] == 1 and got["message"]["data"] == "still here"
    ws.close()
