"""Presence that heals, with real processes: a real Redis restart (the process stopped and a
fresh one started on the same port with an empty data dir) and a `kill -9`'d sidecar whose
replacement has another name. Short intervals through the sidecar flags keep each test fast.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.stack_helpers import Sidecars, admin_get, client, drain, recv_json
from wsop.acl import bitmap, keys, seed
from wsop.acl.dataset import TenantData
from wsop.acl.store import TenantStore
from wsop.local.redis_binary import free_port, start_server


@dataclass
class RestartableRedis:
    """A redis-server of this test alone, which `restart()` replaces by an empty one."""

    port: int
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    generation: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        workdir = self.root / f"data-{self.generation}"  # a fresh, empty data dir each time
        self.proc = start_server(self.port, workdir)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root / f"data-{self.generation}", ignore_errors=True)

    def restart(self) -> None:
        self.stop()
        self.generation += 1
        self.start()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(free_port(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def seed_acl(url: str, teams: dict[str, set[int]]) -> None:
    """What the app does (again after a data loss): team bitmaps, never the online one."""
    r = redis.Redis.from_url(url)
    data = TenantData(
        tenant="A",
        teams={t: bitmap.encode(sorted(m)) for t, m in teams.items()},
        online=None,
        memberships=sum(map(len, teams.values())),
        online_count=0,
    )
    seed.seed(TenantStore(r), [data], False)
    r.close()


def online(url: str, users: list[int]) -> list[int]:
    r = redis.Redis.from_url(url)
    try:
        return [u for u in users if r.getbit(keys.online_key("A"), u)]
    finally:
        r.close()


def wait_until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held (polled every 50 ms); fails after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def scrape(stack: Sidecars, series: str) -> float:
    total = 0.0
    for proc in stack.procs.values():
        if proc.proc.poll() is not None:
            continue
        url = proc.url.replace("ws://", "http://") + "/metrics"
        for line in admin_get(url).decode().splitlines():
            if line.startswith(series + " ") or line.startswith(series + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def team_ack(ws, msg_id: str, timeout: float = 10.0) -> tuple[dict, list[dict]]:
    """Send a team message; its ack (or error), and the frames that came before it."""
    ws.send(json.dumps({"type": "team", "teams": ["eng"], "data": msg_id, "id": msg_id}))
    deadline = time.monotonic() + timeout
    before = []
    while True:
        frame = recv_json(ws, timeout=max(0.1, deadline - time.monotonic()))
        if frame["type"] in ("ack", "error"):
            return frame, before
        before.append(frame)


def start_stack(redis_url: str, tmp_path: Path, names: list[str], flags: list[str]) -> Sidecars:
    stack = Sidecars(redis_url, tmp_path / "members.json", {})
    stack.write_members()
    try:
        for name in names:
            stack.start(name, tmp_path, flags)
        stack.write_members()
        time.sleep(0.8)  # every sidecar polls the members file
    except BaseException:
        stack.stop_all()
        raise
    return stack


FAST = ["--heartbeat", "0.3", "--lease", "1.5"]
USERS = [1, 2, 3, 4, 5, 6]


def test_clients_stay_online_across_a_redis_restart(
    own_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Regression: after a restart with empty data, connected users were no longer online;
    team messages skipped them and no ack said so."""
    seed_acl(own_redis.url, {"eng": set(USERS)})
    stack = start_stack(own_redis.url, tmp_path, ["s0", "s1", "s2"], FAST)
    conns = []
    try:
        urls = [p.url for p in stack.procs.values()]
        conns = [client(urls[i % 3], "A", u) for i, u in enumerate(USERS)]
        wait_until(lambda: online(own_redis.url, USERS) == USERS, 5)

        redis.Redis.from_url(own_redis.url).set("marker", 1)
        own_redis.restart()
        # really empty (the online bits themselves may be back already: heartbeat 0.3 s)
        assert redis.Redis.from_url(own_redis.url).get("marker") is None
        seed_acl(own_redis.url, {"eng": set(USERS)})  # the app re-seeds its ACL data
        healed = wait_until(lambda: online(own_redis.url, USERS) == USERS, 5)
        print(f"\nonline bits back {healed:.2f} s after the restart (heartbeat 0.3 s)")

        ack, before = team_ack(conns[0], "after-restart")
        assert ack == {"type": "ack", "id": "after-restart", "delivered": len(USERS)}
        for i, ws in enumerate(conns):
            frames = drain(ws, 0.3) + (before if i == 0 else [])
            assert [f["data"] for f in frames if f["type"] == "message"] == ["after-restart"]
        assert scrape(stack, "wsop_presence_reasserted_total") >= 3  # every sidecar
        health_url = urls[0].replace("ws://", "http://") + "/healthz"
        presence = json.loads(urllib.request.urlopen(health_url).read())["presence"]
        assert presence["epoch"] and presence["complete"] and presence["reasserted"] == 1
    finally:
        for ws in conns:
            ws.close()
        stack.stop_all()


def test_a_killed_sidecars_users_go_offline_when_its_replacement_has_another_name(
    own_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Regression: a crashed sidecar's presence was released only by a sidecar of the same
    name; a replacement pod has another name, so its users stayed online for ever."""
    seed_acl(own_redis.url, {"eng": {1, 2, 3, 4}})
    # (no history: with one, members offline less than its window stay recipients of
    # team messages — recorded, and reported undelivered — which is not this test's point)
    flags = [*FAST, "--history", "off"]
    stack = start_stack(own_redis.url, tmp_path, ["s0", "s1", "s2"], flags)
    conns = []
    try:
        s0, s1, s2 = (stack.procs[n] for n in ("s0", "s1", "s2"))
        conns = [client(s0.url, "A", 1), client(s0.url, "A", 2)]
        conns += [client(s1.url, "A", 3), client(s2.url, "A", 4)]
        wait_until(lambda: online(own_redis.url, [1, 2, 3, 4]) == [1, 2, 3, 4], 5)

        s0.proc.kill()  # kill -9: no shutdown, no cleanup
        s0.proc.wait()
        killed_at = time.monotonic()
        del stack.procs["s0"]
        stack.start("s3", tmp_path, flags)  # the replacement, under another name
        stack.write_members()
        replaced_after = time.monotonic() - killed_at  # seconds on a busy machine
        wait_until(lambda: online(own_redis.url, [1, 2]) == [], 5)
        offline_after = time.monotonic() - killed_at
        print(f"\nkilled sidecar's users offline {offline_after:.2f} s after the kill")
        # a lease after the kill (or when this test looks again, if starting the
        # replacement took longer), a heartbeat, and slack for 2 shared cores
        assert offline_after <= max(1.5, replaced_after) + 0.3 + 1.5
        assert online(own_redis.url, [3, 4]) == [3, 4]  # the live sidecars' users stay

        time.sleep(0.8)  # members file polled
        ack, _ = team_ack(conns[2], "after-kill")
        assert ack == {"type": "ack", "id": "after-kill", "delivered": 2}
        assert scrape(stack, "wsop_presence_reaped_total") == 1  # reaped once, not per sidecar
    finally:
        for ws in conns:
            ws.close()
        stack.stop_all()


def test_a_team_message_right_after_a_restart_waits_and_reaches_everyone(
    own_redis: RestartableRedis, tmp_path: Path
) -> None:
    """The message path itself notices the new epoch: it waits until every sidecar has
    re-asserted its connections instead of resolving against an empty online bitmap."""
    seed_acl(own_redis.url, {"eng": set(USERS)})
    slow = ["--heartbeat", "2", "--lease", "6"]
    stack = start_stack(own_redis.url, tmp_path, ["s0", "s1", "s2"], slow)
    conns = []
    try:
        urls = [p.url for p in stack.procs.values()]
        conns = [client(urls[i % 3], "A", u) for i, u in enumerate(USERS)]
        wait_until(lambda: online(own_redis.url, USERS) == USERS, 5)

        own_redis.restart()
        seed_acl(own_redis.url, {"eng": set(USERS)})
        sent = time.monotonic()
        ack, _ = team_ack(conns[0], "right-after")
        print(f"\nack {time.monotonic() - sent:.2f} s after sending (heartbeat 2 s)")
        assert ack == {"type": "ack", "id": "right-after", "delivered": len(USERS)}
        assert scrape(stack, "wsop_presence_incomplete_total") == 0
    finally:
        for ws in conns:
            ws.close()
        stack.stop_all()
