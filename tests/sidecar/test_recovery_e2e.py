"""Recovery with real processes (issue 15): a client that reconnects with `?since=` through
the LB gets exactly what it missed — direct and team messages, in order — then
`recovered`; a team message it may no longer read is left out; a window it overstayed
fails honestly; and its log follows it across moves, drains and scale-downs (in-memory
history) or a kill -9 of its owner (Redis Streams)."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.stack_helpers import (
    ADMIN_TOKEN,
    Sidecars,
    admin_get,
    client,
    drain,
    recv_json,
    seed_tenant,
    start_lb,
    stop_process,
)
from wsop import protocol
from wsop.ring import build

T = "rec"


@contextmanager
def stack(
    redis_url: str, tmp_path: Path, names: tuple[str, ...] = ("s0", "s1"), extra=()
) -> Iterator[tuple[Sidecars, str]]:
    """Sidecars on a members file and an LB that follows it: (sidecars, LB url)."""
    sidecars = Sidecars(redis_url, tmp_path / "members.json", {})
    try:
        sidecars.write_members()
        for name in names:
            sidecars.start(name, tmp_path, list(extra))
        sidecars.write_members()
        time.sleep(0.8)
        proc, port = start_lb(sidecars.members_file, tmp_path / "lb.log")
        try:
            yield sidecars, f"ws://127.0.0.1:{port}"
        finally:
            stop_process(proc)
    finally:
        sidecars.stop_all()


def owned_by(names, owner: str, count: int, start: int = 1) -> list[int]:
    """`count` user ids of tenant T whose ring owner among `names` is `owner`."""
    ring = build("rendezvous", sorted(names))
    return [u for u in range(start, start + 500) if ring.owner((T, u)) == owner][:count]


def messages_until_recovered(ws: ClientConnection) -> tuple[list[dict], dict]:
    got = []
    while True:
        frame = recv_json(ws)
        if frame["type"] == "recovered":
            return got, frame
        got.append(frame)


def acked(ws: ClientConnection, frame: str) -> dict:
    ws.send(frame)
    while True:
        reply = recv_json(ws)
        if reply["type"] in ("ack", "error"):
            return reply


def last_offset(ws: ClientConnection, data: str) -> str:
    frame = recv_json(ws)
    assert frame["type"] == "message" and frame["data"] == data, frame
    return frame["offset"]


def publish(lb: str, body: dict) -> dict:
    """POST /publish through the LB with the admin token: the ack."""
    request = urllib.request.Request(
        lb.replace("ws://", "http://") + "/publish",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


def went_offline(lb: str, alice: int, bob: int) -> tuple[ClientConnection, str]:
    """alice's connection, and the offset bob saw last (m0, from alice) before he left:
    his presence is cleared by then (he is "recent" now, not online)."""
    sender, b = client(lb, T, alice), client(lb, T, bob)
    time.sleep(0.2)
    assert acked(sender, protocol.encode_direct(bob, "m0", "0"))["delivered"] == 1
    since = last_offset(b, "m0")
    b.close()
    time.sleep(0.3)
    return sender, since


BACKENDS = pytest.mark.parametrize("backend", ["memory", "redis"])


@BACKENDS
def test_missed_direct_and_team_messages_are_replayed_in_order_then_live_ones(
    redis_url: str, r: redis.Redis, tmp_path: Path, backend: str
) -> None:
    with stack(redis_url, tmp_path, extra=("--history", backend)) as (sidecars, lb):
        bob, carol = owned_by(sidecars.procs, "s0", 1)[0], owned_by(sidecars.procs, "s1", 1)[0]
        alice = 900  # the sender
        seed_tenant(r, T, {"eng": {alice, bob, carol}, "ops": {alice, bob}})
        sender, since = went_offline(lb, alice, bob)
        if backend == "redis":  # (a Redis that lost its scripts: loaded again, nothing lost)
            r.script_flush()
        acks = [
            acked(sender, protocol.encode_direct(bob, "m1", "1")),
            acked(sender, protocol.encode_team(["eng"], "m2", "2")),
            acked(sender, protocol.encode_direct(carol, "not bob", "3")),
            acked(sender, protocol.encode_team(["ops", "eng"], "m4", "4")),
        ]
        acks.append(publish(lb, {"tenant": T, "type": "direct", "to": bob, "data": "m5"}))
        # bob was not connected: reported undelivered, never silently counted
        assert [a.get("undelivered", 0) for a in acks] == [1, 1, 1, 1, 1]
        b = client(lb, T, bob, since=since)
        missed, recovered = messages_until_recovered(b)
        assert [m["data"] for m in missed] == ["m1", "m2", "m4", "m5"]  # (m5: published)
        assert recovered == {"type": "recovered", "ok": True, "count": 4}
        assert missed[1]["teams"] == ["eng"] and missed[0]["from"] == alice
        epochs = {protocol.parse_offset(m["offset"])[0] for m in missed}
        seqs = [protocol.parse_offset(m["offset"])[1] for m in missed]
        assert epochs == {protocol.parse_offset(since)[0]} and seqs == [2, 3, 4, 5]
        assert acked(sender, protocol.encode_direct(bob, "m6", "6"))["delivered"] == 1
        live = recv_json(b)
        assert live["data"] == "m6" and protocol.parse_offset(live["offset"])[1] == 6
        assert drain(b, 0.3) == []  # nothing twice
        # the same offset again (another tab, a retry): the same answer
        again = client(lb, T, bob, since=since)
        missed, recovered = messages_until_recovered(again)
        assert [m["data"] for m in missed] == ["m1", "m2", "m4", "m5", "m6"] and recovered["ok"]
        metrics = admin_get(f"{sidecars.procs['s0'].url}/metrics").decode()
        assert 'wsop_recoveries_total{result="ok"} 2.0' in metrics
        if backend == "redis":  # a stream per user, on the tenant's slot, bounded in time
            stream = f"history:{{{T}}}:{bob}"
            assert r.xlen(stream) == 6 and 0 < r.pttl(stream) <= 120_000
        for ws in (sender, b, again):
            ws.close()


@BACKENDS
def test_a_team_message_is_not_replayed_to_a_user_removed_from_the_team(
    redis_url: str, r: redis.Redis, tmp_path: Path, backend: str
) -> None:
    with stack(redis_url, tmp_path, extra=("--history", backend)) as (sidecars, lb):
        bob = owned_by(sidecars.procs, "s1", 1)[0]
        alice = 900
        seed_tenant(r, T, {"eng": {alice, bob}, "ops": {alice, bob}})
        sender, since = went_offline(lb, alice, bob)
        acked(sender, protocol.encode_team(["eng"], "secret of eng", "1"))
        acked(sender, protocol.encode_team(["ops"], "ops news", "2"))
        acked(sender, protocol.encode_direct(bob, "direct", "3"))
        r.setbit(f"teams:{{{T}}}:eng", bob, 0)  # bob leaves eng while offline
        b = client(lb, T, bob, since=since)
        missed, recovered = messages_until_recovered(b)
        assert [m["data"] for m in missed] == ["ops news", "direct"]
        assert recovered == {"type": "recovered", "ok": True, "count": 2}
        metrics = admin_get(f"{sidecars.procs['s1'].url}/metrics").decode()
        assert "wsop_recovery_withheld_total 1.0" in metrics
        sender.close()
        b.close()


def test_refusals_exceeded_window_malformed_unknown_and_no_history(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    with stack(redis_url, tmp_path, extra=("--history-messages", "3")) as (sidecars, lb):
        bob, alice = 5, 900
        seed_tenant(r, T, {"eng": {alice, bob}})
        sender, since = went_offline(lb, alice, bob)
        for i in range(1, 5):  # 4 missed, 3 kept: m1 is gone
            acked(sender, protocol.encode_direct(bob, f"m{i}", str(i)))
        for offset, reason in (
            (since, protocol.WINDOW_EXCEEDED),
            ("not an offset", protocol.MALFORMED_OFFSET),
            ("x" * 300, protocol.MALFORMED_OFFSET),
            ("deadbeef1:1", protocol.UNKNOWN_OFFSET),
        ):
            ws = client(lb, T, bob, since=offset)
            assert recv_json(ws) == {"type": "recovered", "ok": False, "reason": reason}
            # the connection works all the same: live messages follow
            acked(sender, protocol.encode_direct(bob, "live", "l"))
            assert recv_json(ws)["data"] == "live"
            ws.close()
        # another user's offset reads nothing of theirs
        carol = 6
        eve = client(lb, T, carol, since=since)
        assert recv_json(eve) == {"type": "recovered", "ok": False, "reason": "unknown_offset"}
        eve.close()
        sender.close()


def test_no_history_says_so(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    with stack(redis_url, tmp_path, ("s0",), ("--history", "off")) as (_, lb):
        seed_tenant(r, T, {"eng": {1, 2}})
        a, b = client(lb, T, 1), client(lb, T, 2, since="abc:1")
        assert recv_json(b) == {"type": "recovered", "ok": False, "reason": "disabled"}
        acked(a, protocol.encode_direct(2, "plain", "1"))
        assert "offset" not in recv_json(b)  # no history, no offsets
        a.close()
        b.close()
        with pytest.raises(InvalidStatus) as twice:  # which offset? neither: a 400
            connect(f"{lb}/ws?tenant={T}&user=3&since=abc:1&since=abc:2", open_timeout=5)
        assert twice.value.response.status_code == 400
        assert b"?since= at most once" in twice.value.response.body


def test_the_window_is_a_time_too(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    with stack(redis_url, tmp_path, ("s0",), ("--history-age", "1")) as (_, lb):
        seed_tenant(r, T, {"eng": {1, 2}})
        a, b = client(lb, T, 1), client(lb, T, 2)
        time.sleep(0.2)
        acked(a, protocol.encode_direct(2, "m0", "0"))
        since = last_offset(b, "m0")
        b.close()
        acked(a, protocol.encode_direct(2, "m1", "1"))
        time.sleep(3.0)  # offline longer than the window, and a sweep (1 s) since
        b = client(lb, T, 2, since=since)
        # (every entry aged out: the log itself is gone, and the epoch with it)
        assert recv_json(b) == {"type": "recovered", "ok": False, "reason": "unknown_offset"}
        a.close()
        b.close()


def wait_for_membership(sidecars: Sidecars, names: set[str], timeout: float = 10.0) -> None:
    """Every running sidecar has adopted the members file's membership (`names`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = []
        for proc in sidecars.procs.values():
            views.append(set(json.loads(admin_get(f"{proc.url}/healthz"))["members"]))
        if all(view == names for view in views):
            time.sleep(0.5)  # (the logs handed over travel after the adoption)
            return
        time.sleep(0.1)
    raise AssertionError(f"membership never became {sorted(names)}")


def test_a_moved_users_log_follows_it_to_its_new_owner_and_back(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    """In-memory history: a scale-up hands bob's log to his new owner over the peer link;
    a scale-down (the sidecar stops) hands it back; offsets stay valid throughout."""
    with stack(redis_url, tmp_path) as (sidecars, lb):
        ring3 = build("rendezvous", ["s0", "s1", "s2"])
        bob = next(u for u in owned_by(sidecars.procs, "s1", 50) if ring3.owner((T, u)) == "s2")
        alice = 900
        seed_tenant(r, T, {"eng": {alice, bob}})
        sender, since = went_offline(lb, alice, bob)
        acked(sender, protocol.encode_team(["eng"], "m1", "1"))  # recorded on s1
        sidecars.start("s2", tmp_path)
        sidecars.write_members()
        wait_for_membership(sidecars, {"s0", "s1", "s2"})
        acked(sender, protocol.encode_direct(bob, "m2", "2"))  # recorded on s2
        b = client(lb, T, bob, since=since)
        missed, recovered = messages_until_recovered(b)
        assert [m["data"] for m in missed] == ["m1", "m2"] and recovered["ok"], recovered
        since = missed[-1]["offset"]
        assert protocol.parse_offset(since)[0] == protocol.parse_offset(missed[0]["offset"])[0]
        b.close()
        time.sleep(0.3)
        metrics = admin_get(f"{sidecars.procs['s2'].url}/metrics").decode()
        installed = re.search(r'wsop_history_handovers_total\{result="installed"\} (\S+)', metrics)
        assert installed and float(installed.group(1)) >= 1 and 'result="merged"' not in metrics
        acked(sender, protocol.encode_direct(bob, "m3", "3"))  # recorded on s2
        gone = sidecars.procs.pop("s2")
        sidecars.write_members()
        gone.proc.send_signal(signal.SIGTERM)  # stopping: its logs go to their owners
        gone.stop()
        wait_for_membership(sidecars, {"s0", "s1"})
        acked(sender, protocol.encode_direct(bob, "m4", "4"))  # recorded on s1 again
        b = client(lb, T, bob, since=since)
        missed, recovered = messages_until_recovered(b)
        assert [m["data"] for m in missed] == ["m3", "m4"] and recovered["ok"], recovered
        assert len({m["id"] for m in missed}) == 2
        sender.close()
        b.close()


def test_redis_history_survives_a_kill_9_of_the_owner(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    """--history redis: the owner dies without a word; its successor serves the replay
    from the shared streams, and carries the same sequence on."""
    extra = ("--history", "redis")
    with stack(redis_url, tmp_path, extra=extra) as (sidecars, lb):
        bob = owned_by(sidecars.procs, "s1", 1)[0]
        alice = next(u for u in owned_by(sidecars.procs, "s0", 5, start=900))
        seed_tenant(r, T, {"eng": {alice, bob}})
        sender, since = went_offline(lb, alice, bob)
        acked(sender, protocol.encode_team(["eng"], "m1", "1"))
        acked(sender, protocol.encode_direct(bob, "m2", "2"))
        dead = sidecars.procs.pop("s1")
        dead.proc.kill()
        dead.proc.wait()
        sidecars.write_members()
        wait_for_membership(sidecars, {"s0"})
        acked(sender, protocol.encode_direct(bob, "m3", "3"))  # s0 owns bob now
        b = client(lb, T, bob, since=since)
        missed, recovered = messages_until_recovered(b)
        assert [m["data"] for m in missed] == ["m1", "m2", "m3"] and recovered["ok"], recovered
        seqs = [protocol.parse_offset(m["offset"])[1] for m in missed]
        assert seqs == [2, 3, 4]
        sender.close()
        b.close()


def test_a_message_waiting_for_a_killed_owner_reaches_its_user_after_the_reconnect(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    """A direct message sent while the sender's sidecar still names the killed owner
    waits on a link that cannot dial. When the membership drops the owner it goes to the
    new owner at once, which records and delivers it: the user who reconnected gets it
    once (in the replay or live). (It used to wait out the link's 3 s, then be recorded
    only: a user whose replay was read meanwhile never got it — about 60 deliveries
    booked lost_disconnected per kill-sidecar load test.)"""
    extra = ("--history", "redis")
    with stack(redis_url, tmp_path, extra=extra) as (sidecars, lb):
        bob = owned_by(sidecars.procs, "s1", 1)[0]
        alice = next(u for u in owned_by(sidecars.procs, "s0", 5, start=900))
        seed_tenant(r, T, {"eng": {alice, bob}})
        sender, b = client(lb, T, alice), client(lb, T, bob)
        time.sleep(0.2)
        assert acked(sender, protocol.encode_direct(bob, "m0", "0"))["delivered"] == 1
        since = last_offset(b, "m0")
        dead = sidecars.procs.pop("s1")
        dead.proc.kill()
        dead.proc.wait()
        sender.send(protocol.encode_direct(bob, "m1", "1"))  # s0 still names s1 its owner
        time.sleep(0.5)  # (s0's link to s1 fails to dial meanwhile)
        sidecars.write_members()
        wait_for_membership(sidecars, {"s0"})
        b = client(lb, T, bob, since=since)
        missed, recovered = messages_until_recovered(b)
        assert recovered["ok"], recovered
        live = [m for m in drain(b, wait=3.0) if m["type"] == "message"]
        assert [m["data"] for m in missed + live] == ["m1"], (missed, live)
        sender.close()
        b.close()


@pytest.mark.cluster
def test_redis_history_on_a_redis_cluster(tmp_path: Path) -> None:
    """--history redis on a real 3-master Cluster: the record script and the replay's
    reads touch one tenant's keys only (one slot), the recent bitmaps too."""
    from wsop.backend import connect as connect_redis
    from wsop.local.cluster import start_cluster

    cluster = start_cluster(tmp_path / "cluster")
    try:
        seed_tenant(connect_redis(cluster.url), T, {"eng": {1, 2, 3}})
        with stack(cluster.url, tmp_path, ("s0",), ("--history", "redis")) as (_, lb):
            sender, since = went_offline(lb, 1, 2)
            acked(sender, protocol.encode_team(["eng"], "m1", "1"))
            acked(sender, protocol.encode_direct(2, "m2", "2"))
            b = client(lb, T, 2, since=since)
            missed, recovered = messages_until_recovered(b)
            assert [m["data"] for m in missed] == ["m1", "m2"] and recovered["ok"], recovered
            sender.close()
            b.close()
    finally:
        cluster.stop()
