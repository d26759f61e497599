"""The load test's side of recovery (issue 15): users reconnect with `?since=`, replayed
deliveries are booked, `recovered` frames counted — pure ledger and wire tests, and one
real `kill-sidecar` run on a stack with `--history redis` (docs/loadtest.md, "Recovery").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import run_wsop
from wsop.load.ledger import Ledger, message_key
from wsop.load.tallies import LOSS_CLASSES
from wsop.load.wire import Conn, since_query


def _ledger(**kw: Any) -> Ledger:
    ledger = Ledger(grace_s=1.0, tenants_per_worker=1, **kw)
    ledger.run_started_at = 100.0
    return ledger


def _balanced(snap: dict[str, Any]) -> None:
    assert snap["expected"] == snap["delivered"] + snap["lost"]
    assert snap["lost"] == sum(snap[k] for k in LOSS_CLASSES)


def test_a_replay_after_settling_turns_a_disconnected_loss_into_a_late_delivery() -> None:
    ledger = _ledger(edges=(5.0,))
    away, present = message_key(0, 0), message_key(0, 1)
    ledger.dropped(1, 105.5)
    ledger.sent(away, (1,), 106.0)  # to the user who is away
    ledger.sent(present, (1, 2), 106.0, team=True)  # 2 never gets it: stays silent
    ledger.acked(present, 1, 0)
    ledger.settle(200.0)
    assert ledger.counters.lost_disconnected == 2 and ledger.counters.silent_loss == 1
    # 1 reconnects with ?since=: the replay brings both messages
    assert not ledger.received(1, away, 106.0, replay=True)  # booked, not a new sample
    assert not ledger.received(1, present, 106.0, replay=True)
    ledger.recovered(1, True, "None", 201.0)
    ledger.back(1, 201.0)
    snap = ledger.snapshot()
    _balanced(snap)
    assert (snap["delivered"], snap["lost"], snap["lost_disconnected"]) == (2, 1, 0)
    assert (snap["recovered_messages"], snap["recovered_late"], snap["late"]) == (2, 2, 0)
    assert (snap["recovery_ok"], snap["recovery_failed"]) == (1, 0)
    assert snap["silent_loss"] == 1  # the replay to 1 does not excuse 2's loss
    after = snap["windows"][1]
    assert (after["delivered"], after["lost_disconnected"], after["recovered_messages"]) == (
        2, 0, 2,
    )  # fmt: skip
    assert after["recovery_ok"] == 1  # the window of the drop (105.5 s: after the edge)
    # the same replay again (another reconnect with an older offset): duplicates
    assert not ledger.received(1, away, 106.0, replay=True)
    snap = ledger.snapshot()
    assert (snap["duplicates"], snap["delivered"], snap["recovered_messages"]) == (1, 2, 2)
    assert (snap["recovered_duplicates"], snap["live_after_replay"]) == (1, 0)
    assert not ledger.received(1, away, 106.0)  # and live once more: after a replay
    assert ledger.snapshot()["live_after_replay"] == 1
    _balanced(snap)


def test_a_replay_within_the_grace_period_is_an_ordinary_delivery() -> None:
    ledger = _ledger()
    key = message_key(0, 0)
    ledger.dropped(1, 100.5)
    ledger.sent(key, (1,), 101.0)
    assert ledger.received(1, key, 101.0, replay=True)
    assert not ledger.received(1, key, 101.0)  # live again after the replay: a duplicate
    ledger.settle(200.0)
    snap = ledger.snapshot()
    _balanced(snap)
    assert (snap["delivered"], snap["lost"], snap["duplicates"]) == (1, 0, 1)
    # the live copy was the duplicate, of a message the replay had delivered
    assert (snap["recovered_duplicates"], snap["live_after_replay"]) == (0, 1)
    assert (snap["recovered_messages"], snap["recovered_late"]) == (1, 0)


def test_a_reported_undelivered_loss_is_recovered_but_a_silent_one_stays_late() -> None:
    ledger = _ledger()
    reported, silent = message_key(0, 0), message_key(0, 1)
    ledger.sent(reported, (1,), 101.0)
    ledger.acked(reported, 0, 1)  # the stack said: kept for its reconnect
    ledger.sent(silent, (2,), 101.0)
    ledger.acked(silent, 1, 0)
    ledger.settle(200.0)
    assert not ledger.received(1, reported, 101.0, replay=True)
    assert not ledger.received(2, silent, 101.0, replay=True)
    snap = ledger.snapshot()
    _balanced(snap)
    assert (snap["reported_undelivered"], snap["recovered_late"]) == (0, 1)
    assert (snap["silent_loss"], snap["silent_late"], snap["late"]) == (1, 1, 1)


def test_live_arrivals_never_count_as_recovered_and_failures_are_counted_by_reason() -> None:
    ledger = _ledger()
    key = message_key(0, 0)
    ledger.dropped(1, 100.5)
    ledger.sent(key, (1,), 101.0)
    ledger.settle(200.0)
    assert not ledger.received(1, key, 101.0)  # not a replay: late, still lost
    ledger.recovered(1, False, "window_exceeded", 201.0)
    ledger.recovered(2, False, "window_exceeded", 201.0)
    ledger.recovered(3, False, "unknown_offset", 201.0)
    snap = ledger.snapshot()
    assert (snap["lost_disconnected"], snap["late"], snap["recovered_messages"]) == (1, 1, 0)
    assert (snap["recovery_ok"], snap["recovery_failed"]) == (0, 3)
    assert snap["recovery_reasons"] == {"window_exceeded": 2, "unknown_offset": 1}


def test_the_reconnect_url_asks_since_the_last_offset() -> None:
    conn = Conn(0, "t0", 0, 1)
    assert since_query(conn) == ""  # first connect, or nothing with an offset received
    conn.since = b"9b1e0f3a1:42"
    assert since_query(conn) == "&since=9b1e0f3a1%3A42"


def test_the_wire_keeps_the_last_offset_and_books_the_replay() -> None:
    """Frames as the stack writes them (`wsop.protocol.with_offset`), through both paths
    of `Wire`: the in-place regex (`_read`) and json (`_on_text`)."""
    from wsop.load.pool import Pool
    from wsop.load.profiles import make_plan

    plan = make_plan("smoke", rate=10, connections=4, duration=4)
    pool = Pool(plan, 0, _NoHooks())
    conn = pool.conns[1]
    key = message_key(0, 0)
    pool.ledger.sent(key, (conn.slot,), 1.0)
    conn.replaying = True
    frame = b'{"type":"message","from":0,"data":[0,0,0,1000000],"id":"0","ts":1,"offset":"e1:7"}'
    pool._on_text(conn, frame)
    assert conn.offset == b"e1:7"
    assert pool.ledger.counters.recovered_messages == 1
    pool._on_text(conn, b'{"offset":"e1:8","type":"message","from":0,"data":"x","id":null}')
    assert conn.offset == b"e1:8"  # another key order: read by json
    pool._on_text(conn, b'{"type":"recovered","ok":true,"count":1}')
    assert not conn.replaying and pool.ledger.counters.recovery_ok == 1
    pool._on_text(conn, b'{"type":"recovered","ok":false,"reason":"unavailable"}')
    assert pool.ledger.recovery_reasons == {"unavailable": 1}


def test_the_fast_path_reads_the_offset_in_place() -> None:
    """`Wire._read`'s regex path, on bytes as a socket delivers them."""
    import socket

    from wsop.load.pool import Pool
    from wsop.load.profiles import make_plan

    pool = Pool(make_plan("smoke", rate=10, connections=4, duration=4), 0, _NoHooks())
    conn = pool.conns[2]
    key = message_key(0, 5)
    pool.ledger.sent(key, (conn.slot,), 1.0, team=True)
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        conn.sock, conn.replaying = ours, True
        payload = (
            b'{"type":"message","from":0,"data":[0,0,5,1000000],"id":"5","ts":1,'
            b'"teams":["a"],"offset":"7f:12"}'
        )
        theirs.sendall(b"\x81" + bytes((len(payload),)) + payload)
        pool._read(conn)
        assert conn.offset == b"7f:12"
        assert pool.ledger.counters.recovered_messages == 1
    finally:
        ours.close()
        theirs.close()


class _NoHooks:
    def fail(self, name: str, reason: str, ms: float = 0.0) -> None:
        pass


def test_kill_sidecar_with_a_redis_history_loses_nothing_silently(
    stack_and_redis_stopped: None,
) -> None:
    """Clients of the killed sidecar reconnect with `?since=` and get, from the Redis
    streams that outlived it, what was sent to them meanwhile."""
    result = run_wsop(
        "loadtest", "--local", "--history", "redis", "--profile", "smoke", "--rate", "100",
        "--connections", "20", "--duration", "10", "--chaos", "kill-sidecar@3s", "--json",
        "--min-rate-ratio", "0.5", timeout=90,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    out = json.loads(result.stdout)
    assert all(f["ok"] for f in out["faults"]), out["faults"]
    assert out["cross_tenant"] == 0 and out["not_back"] == 0
    assert out["expected_deliveries"] == out["delivered"] + out["lost"]
    kill = out["windows"][1]
    assert kill["fault"] == "kill-sidecar@3s" and kill["reconnects"] > 0
    assert out["recovery_ok"] > 0 and kill["recovery_ok"] > 0, out
    assert out["recovered_messages"] > 0, out
    assert sum(w["recovered_messages"] for w in out["windows"]) == out["recovered_messages"]
    # a message the replay carried is never sent live again (12-25 per run before the
    # stack left out deliveries at or before where a session's replay ended)
    assert out["live_after_replay"] == 0, out
    assert out["silent_loss"] == 0, (out["windows"], out["silent_examples"])
    # what waited for the dead owner reaches its users (0-7 left: messages in flight at
    # the killed sidecar; 17-74 when they were recorded only after the replays)
    assert out["lost_disconnected"] < out["recovered_messages"], out
    assert result.returncode == 0, result.stderr


def test_a_bad_history_is_a_one_line_usage_error_before_anything_starts() -> None:
    result = run_wsop("loadtest", "--local", "--history", "disk", "--duration", "3")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: --history must be one of memory, redis, off, got 'disk'"], lines
    assert not (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists()
