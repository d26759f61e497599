"""Sidecars as real processes on loopback: direct, team, multi-tab, cross-sidecar, isolation."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.stack_helpers import (
    Proc,
    Sidecars,
    admin_get,
    client,
    drain,
    drain_all,
    recv_json,
    seed_tenant,
)
from wsop.ring import build
from wsop.sidecar.client import SLOW_CLIENT_S


@pytest.fixture
def sidecars(redis_url: str, tmp_path: Path) -> Iterator[Sidecars]:
    stack = Sidecars(redis_url, tmp_path / "members.json", {})
    stack.write_members()
    for name in ("s0", "s1", "s2"):
        stack.start(name, tmp_path)
    stack.write_members()
    time.sleep(0.8)  # every sidecar polls the members file
    yield stack
    stack.stop_all()


def owner_url(stack: Sidecars, tenant: str, user: int) -> str:
    ring = build("rendezvous", sorted(stack.procs))
    return stack.procs[ring.owner((tenant, user))].url


def test_direct_team_multitab_cross_sidecar_and_isolation(
    sidecars: Sidecars, r: redis.Redis
) -> None:
    seed_tenant(r, "A", {"eng": {1, 2, 3}, "ops": {3, 4}})
    seed_tenant(r, "B", {"eng": {1, 2, 3}})
    urls = [p.url for p in sidecars.procs.values()]
    # Same numeric ids in two tenants; some on their owner, some deliberately elsewhere.
    a1 = client(owner_url(sidecars, "A", 1), "A", 1)
    a2_tab1 = client(urls[0], "A", 2)
    a2_tab2 = client(urls[1], "A", 2)
    a3 = client(urls[2], "A", 3)
    a4 = client(owner_url(sidecars, "A", 4), "A", 4)
    b1 = client(urls[1], "B", 1)
    b2 = client(urls[2], "B", 2)
    everyone = [a1, a2_tab1, a2_tab2, a3, a4, b1, b2]
    time.sleep(0.3)
    assert [r.getbit("online-users:{A}", u) for u in range(6)] == [0, 1, 1, 1, 1, 0]
    assert [r.getbit("online-users:{B}", u) for u in range(4)] == [0, 1, 1, 0]

    a1.send('{"type":"direct","to":2,"data":"hi","id":"d1"}')
    assert recv_json(a1) == {"type": "ack", "id": "d1", "delivered": 1}
    for tab in (a2_tab1, a2_tab2):
        got = recv_json(tab)
        assert got["type"] == "message" and got["from"] == 1 and got["data"] == "hi"
    assert drain(b2) == [] and drain(b1) == []  # B's user 2 never sees A's message

    a3.send('{"type":"team","teams":["eng"],"data":{"x":1},"id":"t1"}')
    expected = {id(a1), id(a2_tab1), id(a2_tab2), id(a3)}
    arrived = zip(everyone, drain_all(everyone, 0.5), strict=True)
    got_by = {id(ws): got for ws, got in arrived if got}
    ack = [f for f in got_by.pop(id(a3)) if f["type"] == "ack"]
    assert ack == [{"type": "ack", "id": "t1", "delivered": 3}]
    for ws_id, frames in got_by.items():
        assert ws_id in expected, frames
        assert [f["teams"] for f in frames] == [["eng"]]
    assert set(got_by) == expected - {id(a3)}

    a4.send('{"type":"team","teams":["eng"],"data":1,"id":"t2"}')
    err = recv_json(a4)
    assert err["type"] == "error" and err["code"] == "forbidden" and err["id"] == "t2"
    assert drain_all(everyone, 0.2) == [[] for _ in everyone]

    for ws in everyone:
        ws.close()
    # the counters the hot path keeps as plain ints reach /metrics when scraped
    scraped = "".join(admin_get(p.url + "/metrics").decode() for p in sidecars.procs.values())
    assert metric_sum(scraped, 'wsop_messages_in_total{type="direct"}') == 1
    assert metric_sum(scraped, 'wsop_messages_in_total{type="team"}') == 2
    assert metric_sum(scraped, "wsop_messages_out_total") == 2 + 4  # d1: 2 tabs; t1: 4 conns
    assert metric_sum(scraped, 'wsop_client_errors_total{code="forbidden"}') == 1


def metric_sum(text: str, series: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")
    )


def test_a_user_the_tenant_cannot_hold_is_refused_at_the_handshake(
    sidecars: Sidecars, r: redis.Redis
) -> None:
    """Refused before the 101 (not accepted then closed), so an LB moving a live client
    there sees the refusal and keeps the client where it is."""
    seed_tenant(r, "A", {"eng": {1}})
    url = next(iter(sidecars.procs.values())).url
    with pytest.raises(InvalidStatus) as refused:
        client(url, "A", 2**40)  # beyond the tenant's max_users
    assert refused.value.response.status_code == 403
    assert b"user id not valid for this tenant" in refused.value.response.body
    client(url, "A", 1).close()  # a valid user of the same tenant still gets in


def test_malformed_frames_get_error_frames_and_connection_survives(
    sidecars: Sidecars, r: redis.Redis
) -> None:
    seed_tenant(r, "A", {"eng": {1, 2}})
    ws = client(next(iter(sidecars.procs.values())).url, "A", 1)
    peer = client(next(iter(sidecars.procs.values())).url, "A", 2)
    cases = {
        "not json": "bad_request",
        "[1,2]": "bad_request",
        '{"type":"shout","id":"u"}': "bad_request",
        '{"type":"direct","id":"m"}': "bad_request",
        '{"type":"team","teams":[],"data":1}': "bad_request",
        '{"type":"team","teams":["nope"],"data":1,"id":"f"}': "forbidden",
    }
    for raw, code in cases.items():
        ws.send(raw)
        frame = recv_json(ws)
        assert frame["type"] == "error" and frame["code"] == code, (raw, frame)
    ws.send(b"\xff\xfe not utf-8")  # a binary frame that is not UTF-8 JSON: a bad request
    assert recv_json(ws) == {
        "type": "error", "id": None, "code": "bad_request", "message": "frame is not UTF-8 text"
    }  # fmt: skip
    ws.send('{"type":"direct","to":2,"data":"still here","id":"ok"}')
    assert recv_json(ws)["type"] == "ack"
    assert recv_json(peer)["data"] == "still here"
    # invalid UTF-8 in a *text* frame is a WebSocket protocol violation (RFC 6455 §8.1)
    ws.send(b'{"type":"direct","to":2,"data":"\xff"}', text=True)
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    assert drain(peer, 0.2) == []
    peer.close()


def test_unknown_names_get_what_protocol_md_says(sidecars: Sidecars, r: redis.Redis) -> None:
    """docs/protocol.md, "Error codes": an unknown team is `forbidden` (nobody is its
    member), an unseeded tenant's team message is `not_found`, and a direct message to
    a user nobody holds is acked as undelivered (direct messages have no ACL)."""
    seed_tenant(r, "A", {"eng": {1, 2}})
    url = next(iter(sidecars.procs.values())).url
    ws = client(url, "A", 1)
    ws.send('{"type":"team","teams":["no-such-team"],"data":1,"id":"t"}')
    assert recv_json(ws)["code"] == "forbidden"
    ws.send('{"type":"direct","to":99,"data":1,"id":"d"}')
    assert recv_json(ws) == {"type": "ack", "id": "d", "delivered": 0, "undelivered": 1}
    stranger = client(url, "nobody-seeded", 1)
    stranger.send('{"type":"team","teams":["eng"],"data":1,"id":"n"}')
    refused = recv_json(stranger)
    assert (refused["type"], refused["code"]) == ("error", "not_found")
    assert "unknown tenant 'nobody-seeded'" in refused["message"]
    ws.close()
    stranger.close()


def test_presence_follows_first_and_last_connection(sidecars: Sidecars, r: redis.Redis) -> None:
    seed_tenant(r, "A", {"eng": {5}})
    urls = [p.url for p in sidecars.procs.values()]
    tab1 = client(urls[0], "A", 5)
    tab2 = client(urls[1], "A", 5)
    time.sleep(0.3)
    assert r.getbit("online-users:{A}", 5) == 1
    tab1.close()
    time.sleep(0.3)
    assert r.getbit("online-users:{A}", 5) == 1  # the other tab is still open
    tab2.close()
    time.sleep(0.3)
    assert r.getbit("online-users:{A}", 5) == 0


def test_sigterm_closes_clients_with_1012_spread_and_clears_presence(
    sidecars: Sidecars, r: redis.Redis
) -> None:
    seed_tenant(r, "A", {"eng": {1, 2, 3}})
    s0 = sidecars.procs["s0"]
    clients = [client(s0.url, "A", u) for u in (1, 2, 3)]
    time.sleep(0.3)
    assert [r.getbit("online-users:{A}", u) for u in (1, 2, 3)] == [1, 1, 1]
    closed_at: list[float] = []

    def wait_closed(ws) -> None:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        closed_at.append(time.monotonic())

    watchers = [threading.Thread(target=wait_closed, args=(ws,)) for ws in clients]
    for t in watchers:
        t.start()
    s0.proc.terminate()
    for t in watchers:
        t.join(15)
    assert len(closed_at) == 3 and [ws.close_code for ws in clients] == [1012] * 3
    assert s0.proc.wait(timeout=15) == 0
    assert [r.getbit("online-users:{A}", u) for u in (1, 2, 3)] == [0, 0, 0]
    # spread over the close window (2 s by default), not all at once
    assert max(closed_at) - min(closed_at) > 0.3


def test_crashed_sidecar_presence_is_released_when_it_restarts(
    sidecars: Sidecars, r: redis.Redis, tmp_path: Path
) -> None:
    seed_tenant(r, "A", {"eng": {7, 8}})
    s0 = sidecars.procs["s0"]
    ws7 = client(s0.url, "A", 7)
    ws8 = client(sidecars.procs["s1"].url, "A", 8)
    time.sleep(0.3)
    assert r.getbit("online-users:{A}", 7) == 1
    s0.proc.kill()  # no shutdown, no cleanup
    s0.proc.wait()
    time.sleep(0.2)
    assert r.getbit("online-users:{A}", 7) == 1  # stale until s0 comes back
    sidecars.start("s0", tmp_path)
    assert r.getbit("online-users:{A}", 7) == 0
    assert r.getbit("online-users:{A}", 8) == 1  # s1's user untouched
    ws8.close()
    del ws7


def test_oversize_frame_closes_with_1009_and_others_are_unharmed(
    sidecars: Sidecars, r: redis.Redis
) -> None:
    from websockets.exceptions import ConnectionClosed

    seed_tenant(r, "A", {"eng": {1, 2}})
    url = sidecars.procs["s0"].url
    big, other = client(url, "A", 1), client(url, "A", 2)
    big.send('{"type":"direct","to":2,"data":"' + "x" * (70 * 1024) + '"}')  # > 64 KiB
    with pytest.raises(ConnectionClosed) as closed:
        big.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert drain(other, 0.2) == []  # nothing of it was delivered
    other.send('{"type":"direct","to":2,"data":"fine","id":"x"}')
    assert recv_json(other)["type"] in ("message", "ack")
    other.close()


def test_a_client_that_stops_reading_is_closed_and_others_are_unharmed(
    redis_url: str, tmp_path: Path, r: redis.Redis
) -> None:
    """Messages to a client that never reads pile up in the sidecar only until the
    slow-client grace (`--slow-client 2`: 2 s, not the default 10) ends: then it is
    closed and counted."""
    seed_tenant(r, "A", {"eng": {1, 2}})
    sidecars = Sidecars(redis_url, tmp_path / "members.json", {})
    sidecars.write_members()
    proc = sidecars.start("solo", tmp_path, ["--slow-client", "2"])
    sidecars.write_members()
    try:
        _stop_reading_then_closed(proc)
    finally:
        sidecars.stop_all()


def _stop_reading_then_closed(proc: Proc) -> None:
    import base64
    import socket

    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", proc.port))
    key = base64.b64encode(b"0123456789abcdef").decode()
    raw.sendall(
        (
            "GET /ws?tenant=A&user=2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert raw.recv(4096).startswith(b"HTTP/1.1 101")  # and then never read again
    sender = client(proc.url, "A", 1)
    blob = "x" * 60_000
    for i in range(150):  # ~9 MB: more than the socket buffers and the 1 MiB mark
        sender.send(f'{{"type":"direct","to":2,"data":"{blob}","id":"{i}"}}')
        assert recv_json(sender)["type"] == "ack"
    filled = time.monotonic()  # (the grace began while the buffer filled)
    metrics_url = proc.url.replace("ws://", "http://") + "/metrics"
    deadline = filled + 20
    closed = 0.0
    while time.monotonic() < deadline and not closed:
        time.sleep(0.25)
        text = admin_get(metrics_url).decode()
        closed = metric_sum(text, "wsop_slow_clients_closed_total")
    assert closed == 1
    assert time.monotonic() - filled < SLOW_CLIENT_S / 2  # the flag, not the default, decided
    sender.send('{"type":"direct","to":1,"data":"still fine","id":"z"}')
    assert {f["type"] for f in (recv_json(sender), recv_json(sender))} == {"ack", "message"}
    sender.close()
    raw.close()


def test_a_direct_message_to_an_id_no_user_can_have_is_a_bad_request(
    sidecars: Sidecars, r: redis.Redis
) -> None:
    """Ids are < max_users (2^24 by default): the handshake refuses the others with 403,
    and a message to one was acked `undelivered: 1` as if someone could be offline there."""
    seed_tenant(r, "A", {"eng": {1}})
    a = client(sidecars.procs["s0"].url, "A", 1)
    for to in (1 << 24, 1 << 53):
        a.send(json.dumps({"type": "direct", "to": to, "data": "x", "id": f"n{to}"}))
        err = recv_json(a)
        assert (err["type"], err["code"], err["id"]) == ("error", "bad_request", f"n{to}"), err
    a.send('{"type":"direct","to":1,"data":"fine","id":"ok"}')
    assert {f["type"] for f in (recv_json(a), recv_json(a))} == {"ack", "message"}
    a.close()


def test_drain_with_no_other_sidecar_is_refused(redis_url: str, tmp_path: Path) -> None:
    stack = Sidecars(redis_url, tmp_path / "members.json", {})
    stack.write_members()
    stack.start("solo", tmp_path)
    stack.write_members()
    try:
        url = stack.procs["solo"].url.replace("ws://", "http://") + "/drain"
        with pytest.raises(urllib.error.HTTPError) as refused:
            admin_get(url)
        assert refused.value.code == 409
        assert json.loads(refused.value.read()) == {"error": "no other sidecar to drain to"}
    finally:
        stack.stop_all()
