"""The lean generator: its pacer, framing, bulk stats, CPU reading, and the pool itself
driven against the bench's sink (a subprocess on 127.0.0.1) without locust or gevent.

The pool test is the ledger's promise under the new engine: a recipient the sink drops
mid-run is reported as loss (its own class), the books balance, and the user comes back.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from tests.conftest import ROOT
from wsop.load.frames import OP_PING, OP_TEXT, FrameReader, Masker
from wsop.load.latency import LatencyBook
from wsop.load.pacer import Pacer
from wsop.load.procstat import cpu_seconds, tree_cpu_seconds
from wsop.load.report import generator_summary
from wsop.local.redis_binary import free_port

# -- the pacer (pure) ----------------------------------------------------------------------


def _drive(pacer: Pacer, seconds: float, capacity: float, step: float = 0.01) -> int:
    """A generator that can send `capacity` msg/s at most: what it sends in `seconds`."""
    sent, t, budget = 0, 0.0, 0.0
    while t < seconds:
        budget = min(budget + capacity * step, capacity * step * 2)
        due = pacer.due(t)
        n = min(due, int(budget))
        pacer.take(n)
        budget -= n
        sent += n
        t += step
    return sent


def test_pacer_keeps_an_absolute_schedule() -> None:
    pacer = Pacer()
    pacer.set_rate(100.0, now=0.0)
    assert pacer.due(0.0) == 1  # the first one at once
    pacer.take(1)
    assert pacer.due(0.005) == 0 and pacer.wait_s(0.005) == pytest.approx(0.005)
    assert pacer.due(0.5) == 50  # 0.01, 0.02, … 0.50: nothing lost to late wake-ups
    pacer.take(50)
    pacer.set_rate(0.0, now=0.5)
    assert pacer.due(10.0) == 0 and pacer.wait_s(10.0) == float("inf")
    assert (pacer.scheduled, pacer.behind) == (51, 0)


def test_past_capacity_the_pacer_plateaus_and_counts_what_it_dropped() -> None:
    """Offered 2x what the generator can send, it sends what it can (a plateau, not a
    collapse) and the rest is `behind`, which is how the summary names the limit."""
    at_capacity, twice = Pacer(), Pacer()
    at_capacity.set_rate(1000.0, now=0.0)
    twice.set_rate(2000.0, now=0.0)
    one = _drive(at_capacity, 10.0, capacity=1000.0)
    two = _drive(twice, 10.0, capacity=1000.0)
    assert one == pytest.approx(10_000, rel=0.02) and at_capacity.behind <= 1
    assert two == pytest.approx(one, rel=0.03)
    twice.set_rate(0.0, now=10.0)
    assert twice.behind == pytest.approx(10_000, rel=0.05)
    assert twice.scheduled == two + twice.behind


# -- framing (pure) ----------------------------------------------------------------------


def _unmask_frames(stream: bytes) -> list[tuple[int, bytes]]:
    return FrameReader().feed(stream)  # the reader unmasks masked frames too


def test_masked_frames_round_trip_with_a_fresh_key_each() -> None:
    masker = Masker()
    payloads = [b"", b"hi", b"x" * 125, b"y" * 126, b"z" * 70_000, '{"é":1}'.encode()]
    frames = [masker.frame(p) for p in payloads]
    assert all(f[1] & 0x80 for f in frames)  # the mask bit is set on every client frame
    assert _unmask_frames(b"".join(frames)) == [(OP_TEXT, p) for p in payloads]
    keys = {masker.frame(b"abcd")[2:6] for _ in range(2000)}
    assert len(keys) > 1990  # fresh random keys (4 KiB of urandom at a time)
    assert _unmask_frames(masker.frame(b"p", OP_PING)) == [(OP_PING, b"p")]


def test_a_big_frame_in_many_reads_is_joined_once() -> None:
    reader = FrameReader()
    frame = bytes([0x81, 127]) + (300_000).to_bytes(8, "big") + b"q" * 300_000
    got = []
    for i in range(0, len(frame), 4096):
        got += reader.feed(frame[i : i + 4096])
        if i + 4096 < len(frame):
            assert got == []
    assert got == [(OP_TEXT, b"q" * 300_000)]


# -- bulk stats and CPU ------------------------------------------------------------------


FLUSH_CHECK = """
import json
from locust.stats import RequestStats
from wsop.load.latency import LatencyBook, flush
stats, book = RequestStats(), LatencyBook()
for us in (400, 1_600, 2_400, 150_000):
    book.add("direct", us, 100)
book.add("team", 7_000, 50)
handed = [flush(book, stats, now=1000.0), flush(book, stats)]
d = stats.get("direct", "WS")
print(json.dumps({"handed": handed, "n": d.num_requests, "bytes": d.total_content_length,
                  "min": d.min_response_time, "max": d.max_response_time,
                  "p50": d.get_response_time_percentile(0.5), "total": stats.total.num_requests,
                  "team": stats.get("team", "WS").num_requests}))
"""


def test_latencies_reach_locusts_stats_in_bulk() -> None:
    """In a subprocess: importing locust monkey-patches the process for gevent."""
    done = subprocess.run([sys.executable, "-c", FLUSH_CHECK], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["handed"] == [5, 0]  # the interval is handed over once
    assert (got["n"], got["bytes"], got["min"], got["max"]) == (4, 400, 0, 150)
    assert got["p50"] == 2 and got["total"] == 5 and got["team"] == 1


def test_cpu_seconds_come_from_proc() -> None:
    before = cpu_seconds()
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert cpu_seconds() >= before + 0.02
    assert os.getpid() in tree_cpu_seconds(os.getpid())
    assert cpu_seconds(2**22 + 12345) == 0.0  # no such process


def test_the_summary_names_the_generator_as_the_limit() -> None:
    def gen(worker: int, behind: int) -> dict[str, Any]:
        return {"worker": worker, "connections": 10, "cpu_s": 9.0, "wall_s": 10.0,
                "idle_s": 0.5, "scheduled": 10_000, "behind": behind, "away": 0,
                "blocked": 0}  # fmt: skip

    fine = generator_summary([gen(0, 50), gen(1, 0)], sent=20_000)
    assert fine["generator_limited"] is False
    assert fine["generator_cpu"] == {"0": 0.9, "1": 0.9}
    assert fine["generator_busy"] == {"0": 0.95, "1": 0.95}
    assert fine["generator_us_per_msg"] == 900.0
    assert generator_summary([gen(0, 500)], sent=9_500)["generator_limited"] is True


# -- the pool against the sink (no locust, no gevent) --------------------------------------


@pytest.fixture
def sink() -> Iterator[tuple[int, Any]]:
    from wsop.load.profiles import make_plan

    plan = replace(make_plan("smoke", rate=200, connections=20, duration=4), spawn_rate=200.0)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "_sink.py"), "--port", str(port),
         "--plan", plan.to_json()],
        stdout=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            _get(port, "/stats")
            break
        except OSError:
            time.sleep(0.1)
    yield port, plan
    proc.terminate()
    proc.wait(timeout=10)


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


class PlainHooks:
    """The pool's world without gevent: blocking handshakes, select() on its epoll fd."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.failures: list[tuple[str, str]] = []
        self.connects = 0
        self.spawned_seen = (0, 0)
        self.fd = -1

    def connect(self, pool: Any, conn: Any) -> None:
        import websocket

        url = f"ws://127.0.0.1:{self.port}/ws?tenant={conn.tenant}&user={conn.user}"
        try:
            ws = websocket.create_connection(url, timeout=5)
        except (OSError, websocket.WebSocketException) as exc:
            pool.connect_failed(conn, str(exc))
            return
        raw = socket.socket(fileno=ws.sock.detach())
        raw.setblocking(False)
        pool.attach(conn, raw)

    def wait(self, timeout: float) -> None:
        select.select([self.fd], [], [], max(0.0, timeout))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def event(self, name: str, ms: float) -> None:
        self.connects += name == "connect"

    def fail(self, name: str, reason: str, ms: float = 0.0) -> None:
        self.failures.append((name, reason))

    def spawned(self, count: int, of: int) -> None:
        self.spawned_seen = (count, of)

    def flush(self, book: LatencyBook) -> None:
        book.take()


def _run(pool: Any, hooks: PlainHooks, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not pool.step(time.monotonic()):
            hooks.wait(0.002)


def test_pool_books_a_dropped_recipient_as_loss_and_brings_it_back(sink) -> None:
    from wsop.load.pool import Pool

    port, plan = sink
    hooks = PlainHooks(port)
    pool = Pool(plan, 0, hooks)
    hooks.fd = pool.ep.fileno()
    _run(pool, hooks, 2.0)  # connect phase: every user up and joined after its hello
    assert hooks.spawned_seen == (20, 20) and pool.ledger.counters.ready == 20
    pool.ledger.run_started_at = time.time()
    pool.set_rate(10.0)  # 200 msg/s over 20 users, direct and team
    _run(pool, hooks, 1.5)
    victim = pool.conns[3]
    # held 1 s before the abort: ~10 direct messages and some team ones are acked but never
    # written, so the loss is certain (a bare abort loses only what is in flight at that
    # instant, sometimes nothing)
    kick = f"/kick?tenant={victim.tenant}&user={victim.user}&hold_ms=1000"
    assert _get(port, kick) == {"kicked": 1}
    _run(pool, hooks, 3.0)
    pool.set_rate(0.0)
    _run(pool, hooks, 1.0)  # the drain
    snap = pool.finish()
    pool.stop()
    assert snap["sent"] > 500 and snap["team"] > 0
    assert snap["expected"] == snap["delivered"] + snap["lost"]
    assert snap["lost"] > 0 and snap["lost_disconnected"] > 0, snap  # the dropped recipient
    assert snap["silent_loss"] == 0 and snap["cross_tenant"] == 0 and snap["duplicates"] == 0
    assert snap["reconnects"] == 1 and snap["not_back"] == 0  # back after backoff + hello
    assert snap["acks_missing"] == 0
    assert ("disconnect", "connection closed by the stack") in hooks.failures
    gen = snap["generator"]
    assert gen["connections"] == 20 and gen["behind"] <= 2 and gen["cpu_s"] > 0
    skipped = snap["send_failed"] + gen["away"] + gen["blocked"] + gen["behind"]
    assert gen["scheduled"] == snap["sent"] + skipped
