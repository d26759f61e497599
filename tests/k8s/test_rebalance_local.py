"""Rebalance end to end on the local stack: 3 sidecars, 300 clients, scale to 4, rebalance;
every connection ends on its planned target, max/mean <= 1.1, and every message sent
throughout is delivered exactly once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from tests.conftest import run_wsop
from wsop.local.redis_binary import free_port

USERS = 300


def wsop_json(*args: str, env: dict[str, str]) -> dict:
    done = run_wsop(*args, "--json", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(240)
def test_scale_then_rebalance_moves_live_connections_without_loss(redis_url: str) -> None:
    from websockets.sync.client import connect

    env = {"WSOP_REDIS_URL": redis_url}
    port = free_port()
    wsop_json("up", "--detach", "--insecure", "--sidecars", "3", "--port", str(port), env=env)
    try:
        lb = f"ws://127.0.0.1:{port}/ws"
        # No keepalive: these clients read nothing until the drain below, so past 16
        # frames their reader stops and would miss its own pong; on a busy machine the run
        # outlasts the 20 s ping timeout and the client closes (1011) under the test.
        clients = {
            u: connect(f"{lb}?tenant=t0&user={u}", legacy=True, ping_interval=None)
            for u in range(USERS)
        }
        received: Counter[tuple[int, int]] = Counter()
        acks: dict[int, dict] = {}
        stop = threading.Event()
        sent_at: dict = {}
        t0 = time.monotonic()

        def sender(me: int) -> None:
            seq = 0
            while not stop.is_set():
                to = (me * 7 + seq * 13) % USERS
                clients[me].send(json.dumps({"type": "direct", "to": to, "data": [me, seq]}))
                sent_at[(me, seq)] = time.monotonic() - t0
                seq += 1
                time.sleep(0.02)
            acks[me] = {"sent": seq}

        senders = [threading.Thread(target=sender, args=(me,)) for me in range(0, USERS, 30)]
        for t in senders:
            t.start()
        t0 = time.monotonic()
        time.sleep(1.0)
        wsop_json("scale", "--sidecars", "4", env=env)
        result = wsop_json("rebalance", "--local", "--epsilon", "0.05", "--rate", "200", env=env)
        time.sleep(1.0)
        stop.set()
        for t in senders:
            t.join()
        time.sleep(1.5)  # let the last messages land

        assert result["moved"] == result["moves"] > 0 and not result["errors"]
        assert result["after"] <= 1.1 < result["before"]
        assert result["unconfirmed"] == 0 and result["observed_after"] <= 1.1
        again = wsop_json("rebalance", "--local", "--epsilon", "0.05", "--dry-run", env=env)
        assert again["moves"] == 0  # everything sits where the plan wants it
        status = wsop_json("status", env=env)
        assert sum(s["connections"] for s in status["sidecars"]) == USERS

        expected: Counter[tuple[int, int]] = Counter()
        for me in range(0, USERS, 30):
            for seq in range(acks[me]["sent"]):
                expected[(me, seq)] = 1
        # Drain every client until two passes in a row (0.3 s apart) find nothing: a
        # sender's stream holds hundreds of acks, and with 300 reader threads in this
        # process one short timeout is no proof that a stream has ended.
        quiet_passes = 0
        while quiet_passes < 2:
            got_any = False
            for user, ws in clients.items():
                while True:
                    try:
                        frame = json.loads(ws.recv(timeout=0.01))
                    except TimeoutError:
                        break
                    got_any = True
                    if frame["type"] == "message":
                        sender_id, seq = frame["data"]
                        assert (sender_id * 7 + seq * 13) % USERS == user  # right recipient
                        received[(sender_id, seq)] += 1
            quiet_passes = 0 if got_any else quiet_passes + 1
            time.sleep(0.3)
        lost = [k for k in expected if received[k] == 0]
        duplicated = [k for k, n in received.items() if n > 1]
        assert sum(expected.values()) > 500
        when = [round(sent_at[k], 2) for k in lost[:10]]
        assert lost == [], f"{len(lost)} of {len(expected)} lost: {lost[:10]} sent at {when} s"
        assert duplicated == []
        for ws in clients.values():
            ws.close()
    finally:
        run_wsop("down", env=env, timeout=60)


@pytest.mark.timeout(120)
def test_drain_moves_every_connection_off_a_sidecar_and_clients_stay(redis_url: str) -> None:
    """`/drain` on s0: each of its clients is moved (through the LB, no reconnect) to its
    owner on the ring without s0; all clients keep sending and receiving."""
    import os
    import urllib.error
    import urllib.request
    from pathlib import Path

    from websockets.sync.client import connect

    from wsop.ring import build

    env = {"WSOP_REDIS_URL": redis_url}
    port = free_port()
    wsop_json("up", "--detach", "--insecure", "--sidecars", "3", "--port", str(port), env=env)
    try:
        record = json.loads((Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").read_text())
        sidecars = {s["name"]: s["url"].replace("ws://", "http://") for s in record["sidecars"]}
        token = record["admin_token"]

        def admin(name: str, path: str) -> dict:
            request = urllib.request.Request(
                sidecars[name] + path, headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                return json.loads(resp.read())

        lb = f"ws://127.0.0.1:{port}/ws"
        clients = {u: connect(f"{lb}?tenant=t0&user={u}", legacy=True) for u in range(60)}
        time.sleep(0.3)
        held = admin("s0", "/connections")["connections"]
        assert held > 0
        with pytest.raises(urllib.error.HTTPError) as refused:  # the admin token is required
            urllib.request.urlopen(sidecars["s0"] + "/drain", timeout=10)
        assert refused.value.code == 401

        for bad in ("/drain?to=nope", "/drain?to=s0", "/drain?to="):  # unknown, itself, empty
            with pytest.raises(urllib.error.HTTPError) as refused:
                admin("s0", bad)
            assert refused.value.code == 400, bad
        answer = admin("s0", "/drain")
        now, without_s0 = build(record["algo"], list(sidecars)), build(record["algo"], ["s1", "s2"])
        expected = Counter(
            without_s0.owner(("t0", u)) for u in range(60) if now.owner(("t0", u)) == "s0"
        )
        assert answer == {"moving": held, "to": expected, "unmovable": 0}
        for _ in range(50):
            if admin("s0", "/connections")["connections"] == 0:
                break
            time.sleep(0.1)
        assert admin("s0", "/connections")["connections"] == 0
        total = sum(admin(n, "/connections")["connections"] for n in ("s1", "s2"))
        assert total == 60  # nobody reconnected, nobody was dropped
        for u, ws in clients.items():  # every client still sends and receives
            ws.send(json.dumps({"type": "direct", "to": (u + 1) % 60, "data": u, "id": str(u)}))
        got = Counter()
        for ws in clients.values():
            for _ in range(2):
                frame = json.loads(ws.recv(timeout=5))
                got[frame["type"]] += 1
                if frame["type"] == "ack":
                    assert frame["delivered"] == 1
        assert got == {"ack": 60, "message": 60}
        for ws in clients.values():
            ws.close()
    finally:
        run_wsop("down", env=env, timeout=60)


@pytest.mark.timeout(120)
def test_scale_down_drains_the_removed_sidecar_and_closes_no_client(redis_url: str) -> None:
    """`wsop scale` down moves the removed sidecar's clients, live, onto the kept ones
    before stopping it: no client sees a close, every one still sends and receives."""
    from websockets.sync.client import connect

    env = {"WSOP_REDIS_URL": redis_url}
    port = free_port()
    wsop_json("up", "--detach", "--insecure", "--sidecars", "3", "--port", str(port), env=env)
    try:
        lb = f"ws://127.0.0.1:{port}/ws"
        clients = {u: connect(f"{lb}?tenant=t0&user={u}", legacy=True) for u in range(60)}
        time.sleep(0.3)
        before = {s["name"]: s["connections"] for s in wsop_json("status", env=env)["sidecars"]}
        assert before["s2"] > 0
        after = wsop_json("scale", "--sidecars", "2", env=env)
        assert [s["name"] for s in after["sidecars"]] == ["s0", "s1"]
        assert sum(s["connections"] for s in after["sidecars"]) == 60
        for u, ws in clients.items():
            ws.send(json.dumps({"type": "direct", "to": (u + 7) % 60, "data": u, "id": str(u)}))
        kinds: Counter[str] = Counter()
        for ws in clients.values():
            for _ in range(2):
                frame = json.loads(ws.recv(timeout=5))  # a closed client raises here
                kinds[frame["type"]] += 1
                assert frame["type"] != "ack" or frame["delivered"] == 1
        assert kinds == {"ack": 60, "message": 60}
        for ws in clients.values():
            ws.close()
    finally:
        run_wsop("down", env=env, timeout=60)


@pytest.mark.timeout(120)
def test_wsop_drain_moves_clients_and_reports_what_could_not_move(redis_url: str) -> None:
    """`wsop drain --local s2`: every client that came through the LB is moved live; a
    client connected to s2 directly (no LB to switch it) stays, and the command says so
    with exit 1."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from websockets.sync.client import connect

    env = {"WSOP_REDIS_URL": redis_url}
    port = free_port()
    wsop_json("up", "--detach", "--insecure", "--sidecars", "3", "--port", str(port), env=env)
    try:
        record = json.loads((Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").read_text())
        s2_url = next(s["url"] for s in record["sidecars"] if s["name"] == "s2")
        lb = f"ws://127.0.0.1:{port}/ws"
        clients = [connect(f"{lb}?tenant=t0&user={u}", legacy=True) for u in range(40)]
        direct = connect(f"{s2_url}/ws?tenant=t0&user=99", legacy=True)
        time.sleep(0.3)
        command = ["drain", "--local", "s2", "--wait", "2", "--json"]
        done = subprocess.run(
            [sys.executable, "-m", "wsop.cli.main", *command],
            capture_output=True, text=True, timeout=60, env={**os.environ, **env},
        )  # fmt: skip
        assert done.returncode == 1
        report = json.loads(done.stdout)
        assert report["sidecar"] == "s2" and report["remaining"] == report["unmovable"] == 1
        assert report["moving"] >= 2 and sum(report["to"].values()) == report["moving"]
        assert set(report["to"]) <= {"s0", "s1"}
        assert done.stderr.strip() == (
            "error: 1 connection(s) still on s2 after 2 s (1 not behind an LB: cannot be moved)"
        )
        status = {s["name"]: s["connections"] for s in wsop_json("status", env=env)["sidecars"]}
        assert status["s2"] == 1 and status["s0"] + status["s1"] == 40
        for u, ws in enumerate(clients):  # the moved ones still work
            ws.send(json.dumps({"type": "direct", "to": (u + 1) % 40, "data": u}))
        got = Counter(json.loads(ws.recv(timeout=5))["type"] for ws in clients for _ in range(2))
        assert got == {"ack": 40, "message": 40}
        for ws in [*clients, direct]:
            ws.close()
    finally:
        run_wsop("down", env=env, timeout=60)
