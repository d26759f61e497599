"""Peer links under bursts, big messages and huge teams; acks that only count what a
holder confirmed. Real sidecar processes on loopback (issue 10, observations 1 and 3)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.stack_helpers import Sidecars, client, drain, drain_all, recv_json, seed_tenant
from wsop.ring import build


@pytest.fixture
def pair(redis_url: str, tmp_path: Path) -> Iterator[Sidecars]:
    stack = Sidecars(redis_url, tmp_path / "members.json", {})
    stack.write_members()
    for name in ("s0", "s1"):
        stack.start(name, tmp_path)
    stack.write_members()
    time.sleep(0.8)  # every sidecar polls the members file
    yield stack
    stack.stop_all()


def owner(stack: Sidecars, tenant: str, user: int) -> str:
    return build("rendezvous", sorted(stack.procs)).owner((tenant, user))


def users_owned_by(stack: Sidecars, tenant: str, name: str, count: int, start: int = 1) -> list:
    out, user = [], start
    while len(out) < count:
        if owner(stack, tenant, user) == name:
            out.append(user)
        user += 1
    return out


def frames_until(ws, pred, timeout: float = 10.0) -> list[dict]:
    """Frames read until `pred(frames)` holds (or the timeout)."""
    frames: list[dict] = []
    deadline = time.monotonic() + timeout
    while not pred(frames) and time.monotonic() < deadline:
        try:
            frames.append(json.loads(ws.recv(timeout=max(0.05, deadline - time.monotonic()))))
        except TimeoutError:
            break
    return frames


def test_a_big_non_ascii_message_crosses_the_peer_link(pair: Sidecars, r: redis.Redis) -> None:
    """40 KB of "é" is a legal client frame, but JSON-escaped it is 120 KB on the link:
    it used to close the link (lost, and the next message too, acked 10 s later)."""
    seed_tenant(r, "A", {"eng": {1, 2}})
    sender_user = users_owned_by(pair, "A", "s0", 1)[0]
    target = users_owned_by(pair, "A", "s1", 1)[0]
    sender = client(pair.procs["s0"].url, "A", sender_user)
    receiver = client(pair.procs["s1"].url, "A", target)
    text = "é" * 20_000
    big = {"type": "direct", "to": target, "data": text, "id": "big"}
    sender.send(json.dumps(big, ensure_ascii=False))  # 40 KB of UTF-8
    sender.send(json.dumps({"type": "direct", "to": target, "data": "next", "id": "next"}))
    started = time.monotonic()
    acks = frames_until(sender, lambda f: len(f) >= 2, timeout=5)
    assert [(a["id"], a["delivered"], a.get("undelivered", 0)) for a in acks] == [
        ("big", 1, 0),
        ("next", 1, 0),
    ]
    assert time.monotonic() - started < 3  # not after an ack timeout
    got = frames_until(receiver, lambda f: len(f) >= 2, timeout=5)
    assert [g["data"] for g in got] == [text, "next"]
    sender.close()
    receiver.close()


def test_a_burst_of_500_direct_messages_crosses_the_peer_link(
    pair: Sidecars, r: redis.Redis
) -> None:
    seed_tenant(r, "A", {"eng": {1, 2}})
    sender_user = users_owned_by(pair, "A", "s0", 1)[0]
    target = users_owned_by(pair, "A", "s1", 1)[0]
    sender = client(pair.procs["s0"].url, "A", sender_user)
    receiver = client(pair.procs["s1"].url, "A", target)
    blob = "x" * 200
    for i in range(500):
        sender.send(f'{{"type":"direct","to":{target},"data":"{i}:{blob}","id":"{i}"}}')
    acks = frames_until(sender, lambda f: len(f) >= 500, timeout=10)
    assert len(acks) == 500
    assert all(a["delivered"] == 1 and not a.get("undelivered") for a in acks)
    got = frames_until(receiver, lambda f: len(f) >= 500, timeout=10)
    assert [int(g["data"].split(":")[0]) for g in got] == list(range(500))
    sender.close()
    receiver.close()


def test_a_huge_team_crosses_the_peer_link_with_an_exact_ack(
    pair: Sidecars, r: redis.Redis
) -> None:
    """30K online members: the users of the other sidecar used to ride in one item too
    big for the link, and none of them got the message."""
    members = range(30_000)
    seed_tenant(r, "A", {"all": members}, online=members)
    sender = client(pair.procs["s0"].url, "A", 0)
    connected = users_owned_by(pair, "A", "s1", 4) + users_owned_by(pair, "A", "s0", 2)
    receivers = [client(pair.procs[owner(pair, "A", u)].url, "A", u) for u in connected]
    time.sleep(0.2)
    sender.send('{"type":"team","teams":["all"],"data":"hello all","id":"t"}')
    ack = frames_until(sender, lambda f: any(x["type"] == "ack" for x in f), timeout=8)[-1]
    assert ack["delivered"] == len(connected) + 1  # the sender is a member too
    assert ack["delivered"] + ack.get("undelivered", 0) == len(members)
    for ws, got in zip(receivers, drain_all(receivers, 0.3), strict=True):
        assert [f["data"] for f in got] == ["hello all"]
        ws.close()
    assert [f["data"] for f in drain(sender, 0.3) if f["type"] == "message"] in (
        [],  # (it may have arrived before the ack)
        ["hello all"],
    )
    sender.close()


def test_a_holder_forward_that_fails_is_reported_undelivered(
    pair: Sidecars, r: redis.Redis
) -> None:
    """A user connected to a sidecar that does not own it (a straggler): the owner
    forwards to that holder. If the holder is gone, the ack must not claim delivery."""
    seed_tenant(r, "A", {"eng": {1, 2}})
    straggler = users_owned_by(pair, "A", "s1", 1)[0]
    sender_user = users_owned_by(pair, "A", "s1", 1, start=straggler + 1)[0]
    held = client(pair.procs["s0"].url, "A", straggler)  # held by s0, owned by s1
    sender = client(pair.procs["s1"].url, "A", sender_user)
    time.sleep(0.3)  # s0's registration reaches s1
    sender.send(f'{{"type":"direct","to":{straggler},"data":"via holder","id":"ok"}}')
    assert frames_until(sender, lambda f: len(f) >= 1)[0]["delivered"] == 1
    assert recv_json(held)["data"] == "via holder"
    pair.procs["s0"].proc.kill()  # the holder dies without a word
    pair.procs["s0"].proc.wait()
    time.sleep(0.2)
    sender.send(f'{{"type":"direct","to":{straggler},"data":"lost","id":"lost"}}')
    ack = frames_until(sender, lambda f: len(f) >= 1, timeout=15)[0]
    assert ack["id"] == "lost"
    assert (ack["delivered"], ack.get("undelivered", 0)) == (0, 1)
    sender.close()
