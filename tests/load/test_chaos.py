"""`wsop loadtest --chaos`: the spec, the ledger's loss classes, windows, and real runs.

The pure parts (spec, classification, windows, backoff) run without sockets; the
nemesis runs against a real local stack in one short load test (< 60 s wall).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import run_wsop
from tests.load.ledger_events import EVENT, play
from wsop.errors import UsageError
from wsop.load.chaos import Fault, parse_spec, reconnect_delay, windows
from wsop.load.ledger import Ledger, message_key
from wsop.load.nemesis import Nemesis
from wsop.load.profiles import make_plan
from wsop.load.report import summary, verdict
from wsop.load.tallies import LOSS_CLASSES, Classes, classify, merge_windows, percentiles
from wsop.local.redis_binary import free_port

# -- the spec (pure) ---------------------------------------------------------------------


def test_spec_parses_every_action_sorted_by_time() -> None:
    faults = parse_spec(
        "drain@45s, rebalance@35s,kill-sidecar@10s,restart-redis@20,scale=4@30s,scale=2@2.5s",
        duration_s=60,
    )
    assert [f.label for f in faults] == [
        "scale=2@2.5s", "kill-sidecar@10s", "restart-redis@20s", "scale=4@30s",
        "rebalance@35s", "drain@45s",
    ]  # fmt: skip
    assert faults[0] == Fault("scale", 2.5, 2)
    assert Fault.from_json(faults[3].to_json()) == faults[3]
    assert parse_spec("KILL-SIDECAR@0s") == [Fault("kill-sidecar", 0.0)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "ACTION@TIME"),
        ("kill-sidecar@1s,", "ACTION@TIME"),
        ("kill-sidecar", "expected ACTION@TIME"),
        ("@5s", "expected ACTION@TIME"),
        ("explode@5s", "unknown action 'explode'; valid actions: kill-sidecar"),
        ("scale@5s", "scale needs a sidecar count"),
        ("scale=0@5s", "scale needs a sidecar count"),
        ("scale=x@5s", "scale needs a sidecar count"),
        ("scale=65@5s", "scale is at most 64 on the local stack"),
        ("drain=2@5s", "drain takes no argument"),
        ("rebalance@soon", "not a number of seconds"),
        ("rebalance@-1s", "0 s or later"),
        ("rebalance@nan", "0 s or later"),
        ("rebalance@30s", "not inside the 30 s run"),
        ("drain@5s,rebalance@5s", "at the same time"),
    ],
)
def test_bad_specs_are_one_line_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_spec(spec, duration_s=30)
    assert "\n" not in str(info.value)


def test_windows_split_the_run_at_each_fault() -> None:
    faults = parse_spec("kill-sidecar@3s,scale=3@9s", duration_s=14)
    assert windows(faults, 14) == [
        {"fault": None, "from_s": 0.0, "to_s": 3.0},
        {"fault": "kill-sidecar@3s", "from_s": 3.0, "to_s": 9.0},
        {"fault": "scale=3@9s", "from_s": 9.0, "to_s": 14},
    ]


def test_reconnect_backoff_is_fast_first_then_capped() -> None:
    assert 0.1 <= reconnect_delay(0, lambda: 0.0) < reconnect_delay(0, lambda: 0.999) <= 0.3
    assert reconnect_delay(1, lambda: 0.5) == pytest.approx(0.4)
    assert [reconnect_delay(n, lambda: 0.999) for n in (4, 10, 1000)] == [2.0, 2.0, 2.0]


# -- classification (pure) ---------------------------------------------------------------


def test_classify_each_case() -> None:
    # everything arrived
    assert classify(3, 3, 0, 0, False) == Classes(delivered=3)
    # a disconnected recipient excuses its own loss only
    assert classify(3, 1, 1, None, False) == Classes(1, lost_disconnected=1, silent_loss=1)
    # no ack and the sender dropped: nobody could tell it
    assert classify(2, 0, 0, None, True) == Classes(lost_unacked=2)
    # the ack reported the loss
    assert classify(2, 1, 0, 1, False) == Classes(1, reported_undelivered=1)
    # the ack's count goes to the disconnected recipients first (pessimistic)
    assert classify(3, 0, 1, 1, False) == Classes(lost_disconnected=1, silent_loss=2)
    assert classify(3, 0, 1, 2, False) == Classes(0, 1, 0, 1, 1)
    # an ack that says "all delivered" while one is missing: silent
    assert classify(1, 0, 0, 0, True) == Classes(silent_loss=1)
    # an ack over-reporting never turns into more than was lost
    assert classify(2, 1, 0, 5, False) == Classes(1, reported_undelivered=1)


@given(
    expected=st.integers(0, 8),
    data=st.data(),
    ack=st.none() | st.integers(0, 10),
    sender_dropped=st.booleans(),
)
def test_every_expected_delivery_lands_in_exactly_one_class(
    expected: int, data: st.DataObject, ack: int | None, sender_dropped: bool
) -> None:
    arrived = data.draw(st.integers(0, expected))
    away = data.draw(st.integers(0, expected - arrived))
    c = classify(expected, arrived, away, ack, sender_dropped)
    parts = [c.delivered, *(getattr(c, k) for k in LOSS_CLASSES)]
    assert min(parts) >= 0 and sum(parts) == expected
    assert c.delivered == arrived and c.lost_disconnected == away
    if ack is None:
        assert c.reported_undelivered == 0
    else:
        assert c.lost_unacked == 0
        assert c.reported_undelivered <= max(0, ack - away)


@given(st.lists(EVENT, max_size=60))
def test_ledger_books_balance_whatever_happens(events: list) -> None:
    """Any interleaving of sends, arrivals, acks, refusals, cancels, drops and settles:
    each expected delivery is delivered or in exactly one loss class, overall and per
    window."""
    ledger = _ledger(edges=(1.0, 2.0))
    sent, now = play(ledger, events, 100.0)
    ledger.settle(now + 10, everything=True)
    snap = ledger.snapshot()
    assert snap["pending"] == 0
    for tally in (snap, *snap["windows"]):
        expected = tally["expected"]
        assert expected == tally["delivered"] + tally["lost"]
        assert tally["lost"] == sum(tally[k] for k in LOSS_CLASSES)
        assert min(tally[k] for k in LOSS_CLASSES) >= 0
    assert sum(w["expected"] for w in snap["windows"]) == snap["expected"]
    assert snap["sent"] == sent == sum(w["sent"] for w in snap["windows"])


# -- the ledger (pure) -------------------------------------------------------------------


def _ledger(**kw) -> Ledger:
    ledger = Ledger(grace_s=1.0, tenants_per_worker=kw.pop("tenants", 1), **kw)
    ledger.run_started_at = 100.0
    return ledger


def test_ledger_classifies_a_scenario_of_every_kind() -> None:
    ledger = _ledger(edges=(5.0,))
    k = [message_key(0, n) for n in range(7)]
    ledger.sent(k[0], (1, 2), 101.0, team=True)  # both arrive
    ledger.sent(k[1], (1,), 101.0)  # recipient 1 drops at 101.5: lost_disconnected
    ledger.sent(k[2], (2,), 101.0)  # acked undelivered: reported
    ledger.sent(k[3], (2,), 101.0)  # acked delivered but never came: silent
    ledger.sent(k[4], (2,), 106.0)  # refused (after the fault at 5 s)
    ledger.sent(k[5], (2,), 106.0)  # cancelled: never left
    ledger.sent(message_key(3, 0), (2,), 106.0)  # sender 3 drops, no ack: unacked
    ledger.cancel(k[5])
    assert ledger.received(1, k[0], 101.0) and ledger.received(2, k[0], 101.0)
    assert not ledger.received(2, k[0], 101.0)  # duplicate
    ledger.dropped(1, 101.5)
    ledger.acked(k[2], 0, 1)
    ledger.acked(k[3], 1, 0)
    ledger.refused(k[4], "forbidden")
    assert not ledger.received(2, k[4], 106.0)  # a refused message arriving: surplus
    ledger.dropped(3, 106.2)
    assert ledger.back(1, 102.0) == pytest.approx(500)
    ledger.settle(110.0)
    snap = ledger.snapshot()
    assert snap["sent"] == 6 and snap["send_failed"] == 1
    assert (snap["expected"], snap["delivered"], snap["lost"]) == (6, 2, 4)
    assert snap["expected"] == snap["delivered"] + snap["lost"]
    assert snap["lost"] == sum(snap[k] for k in LOSS_CLASSES)
    assert (snap["lost_disconnected"], snap["reported_undelivered"]) == (1, 1)
    assert (snap["silent_loss"], snap["lost_unacked"]) == (1, 1)
    assert (snap["refused"], snap["refused_codes"]) == (1, {"forbidden": 1})
    assert (snap["duplicates"], snap["surplus"], snap["cross_tenant"]) == (1, 1, 0)
    assert (snap["disconnects"], snap["reconnects"], snap["not_back"]) == (2, 1, 1)
    assert snap["acks_missing"] == 3  # k[0], k[1] and sender 3's (refused: answered)
    before, after = snap["windows"]
    assert (before["sent"], before["expected"], before["silent_loss"]) == (4, 5, 1)
    assert (after["sent"], after["refused"], after["lost_unacked"]) == (2, 1, 1)
    assert before["reconnects"] == 1 and before["reconnect_ms"] == [500.0]
    assert snap["silent_examples"] == [
        {"tenant": "t0", "from": 0, "to": [2], "team": False, "ack_undelivered": 0, "sent_s": 1.0}
    ]


def test_drops_long_before_a_send_do_not_excuse_it() -> None:
    ledger = _ledger()
    ledger.dropped(1, 100.0)
    ledger.back(1, 100.5)
    ledger.sent(message_key(0, 0), (1,), 102.0)  # 1.5 s after the user was back
    ledger.sent(message_key(0, 1), (1,), 101.4)  # 0.9 s after: still "around" the drop
    ledger.settle(200.0)
    assert ledger.counters.silent_loss == 1 and ledger.counters.lost_disconnected == 1


def test_a_silent_loss_that_arrives_after_settling_is_also_counted_late() -> None:
    ledger = _ledger(edges=(5.0,))
    key = message_key(0, 0)
    ledger.sent(key, (1, 2, 3), 106.0, team=True)
    ledger.acked(key, 3, 0)
    ledger.settle(200.0)
    assert ledger.counters.silent_loss == 3
    assert not ledger.received(2, key, 106.0)  # slow, not lost
    assert not ledger.received(2, key, 106.0)  # a duplicate, not a second late one
    snap = ledger.snapshot()
    assert (snap["late"], snap["silent_late"], snap["duplicates"]) == (1, 1, 1)
    assert snap["windows"][1]["silent_late"] == 1 and snap["windows"][1]["late"] == 1


def test_cross_tenant_deliveries_are_counted_never_matched() -> None:
    ledger = _ledger(tenants=2)  # slot % 2 is the tenant
    key = message_key(0, 0)
    ledger.sent(key, (2,), 101.0)
    assert not ledger.received(1, key, 101.0)  # slot 1 is the other tenant
    ledger.foreign(101.0)  # from another worker: another tenant by construction
    assert ledger.received(2, key, 101.0)
    ledger.settle(200.0)
    assert ledger.counters.cross_tenant == 2 and ledger.counters.delivered == 1


def test_settled_data_is_pruned() -> None:
    ledger = _ledger()
    for n in range(100):
        ledger.dropped(n, 100.0 + n)
        ledger.back(n, 100.2 + n)
        ledger.sent(message_key(n, 0), (n,), 100.0 + n)
        ledger.settle(100.0 + n)
    ledger.settle(300.0)
    assert not ledger._pending and not ledger._order and not ledger._drops


def test_windows_merge_across_processes() -> None:
    a = _ledger(edges=(5.0,))
    b = _ledger(edges=(5.0,))
    for ledger, ms in ((a, 0.2), (b, 0.4)):
        ledger.sent(message_key(0, 0), (0,), 106.0)
        ledger.dropped(0, 106.0)
        ledger.back(0, 106.0 + ms)
    merged = merge_windows([a.snapshot(), b.snapshot()])
    assert merged[1]["sent"] == 2 and sorted(merged[1]["reconnect_ms"]) == [200.0, 400.0]
    assert percentiles([1, 2, 3, 4], (0.5, 0.99)) == {"p50": 2, "p99": 4}
    assert percentiles([]) == {"p50": None, "p99": None}


def _results(counters: dict, chaos: list | None = None) -> dict:
    c = Ledger(1.0).snapshot()
    c.update(counters)
    return {
        "plan": {
            "profile": "smoke", "rate": 100, "connections": 2,
            "stages": [{"seconds": 10, "rate": 100}], "extra": {"chaos": chaos or []},
        },
        "counters": c, "windows": c.pop("windows"), "run_s": 10, "planned_messages": 10,
        "latency_ms": {}, "finals": 1, "workers": 1,
    }  # fmt: skip


def test_verdict_fails_on_silent_loss_and_cross_tenant_only_in_chaos() -> None:
    faults = [{"label": "kill-sidecar@3s", "ok": True}]
    chaos = [Fault("kill-sidecar", 3.0).to_json()]
    lost = {"sent": 10, "expected": 10, "delivered": 7, "lost": 3, "lost_disconnected": 3}
    excused = summary(_results(lost, chaos), "", faults)
    assert verdict(excused, False, 0.9, chaos=True) == []
    assert "3 of 10 deliveries lost (30.00%: lost_disconnected 3)" in verdict(excused, False, 0.9)
    silent = summary(_results({"sent": 10, "lost": 2, "silent_loss": 2}, chaos), "", faults)
    assert "2 silent losses" in verdict(silent, False, 0.9, chaos=True)[0]
    slow = summary(_results({"sent": 10, "lost": 2, "silent_loss": 2, "silent_late": 2}, chaos),
                   "", faults)  # fmt: skip
    assert "2 of them arrived later: raise --grace" in verdict(slow, False, 0.9, chaos=True)[0]
    assert verdict(silent, True, 0.9, chaos=True) == []  # --allow-loss
    crossed = summary(_results({"sent": 10, "cross_tenant": 1}), "")
    assert verdict(crossed, True, 0.9) == ["1 deliveries crossed tenants"]
    failed = summary(_results({"sent": 10}), "", [{"label": "drain@5s", "ok": False,
                                                  "detail": "boom"}])  # fmt: skip
    assert "drain@5s: boom" in verdict(failed, False, 0.9, chaos=True)[0]


# -- the nemesis and the faults ----------------------------------------------------------


def test_nemesis_times_faults_from_the_run_start_and_never_raises(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"run_started_at": time.time() - 3600}))  # a stale run
    calls: list[str] = []

    def joined() -> dict:
        time.sleep(0.3)  # the replacement starting, in the background
        return {"joined": "s2"}

    def ok(fault: Fault) -> dict:
        calls.append(fault.label)
        return {"victim": "s0", "_then": joined}

    def boom(fault: Fault) -> dict:
        raise RuntimeError("no luck\nsecond line")

    faults = parse_spec("kill-sidecar@0.2s,drain@0.4s,rebalance@30s")
    actions = {"kill-sidecar": ok, "drain": boom, "rebalance": ok}
    nemesis = Nemesis(faults, status, make_plan(), "redis://unused", actions)
    nemesis.start()
    time.sleep(0.3)
    assert calls == []  # the stale file is not this run's start
    started = time.time()
    status.write_text(json.dumps({"run_started_at": started}))
    deadline = time.monotonic() + 5
    while len(nemesis.records) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    records = nemesis.stop(timeout=5)
    assert not nemesis.is_alive() and calls == ["kill-sidecar@0.2s"]
    assert [r["label"] for r in records] == ["kill-sidecar@0.2s", "drain@0.4s", "rebalance@30s"]
    first, second, third = records
    assert first["ok"] and first["detail"] == "victim=s0, joined=s2"
    assert first["planned_s"] == 0.2 and 0.15 <= first["started_s"] <= 0.5
    # the drain came on time although the kill's replacement was still joining
    assert 0.35 <= second["started_s"] <= 0.6 and first["recovered_s"] >= 0.3
    assert not second["ok"] and second["detail"] == "RuntimeError: no luck"
    assert not third["ok"] and third["started_s"] is None and "not run" in third["detail"]


def test_faults_replace_sidecars_under_new_names(redis_url: str) -> None:
    from wsop.local import faults, stack, stack_file, stack_proc

    stack.up(sidecars=2, port=free_port(), insecure=True, redis_url=redis_url)
    try:
        first = stack_file.load()
        assert first is not None
        out = faults.kill_sidecar(avoid={"s2"})  # s2: a name seen earlier in the run
        record = stack_file.load()
        assert record is not None
        victim = next(s for s in first.sidecars if s.name == out["victim"])
        assert out["replacement"] == "s3" and not stack_proc.alive(victim)
        assert sorted(s.name for s in record.sidecars) == sorted(
            {"s0", "s1", "s3"} - {out["victim"]}
        )
        out = faults.roll_sidecar(name="s3", avoid={"s0", "s1", "s2", "s3"})
        assert (out["victim"], out["replacement"], out["remaining"]) == ("s3", "s4", 0)
        status = stack.status()
        assert len(status.sidecars) == 2 and all(s.alive for s in status.sidecars)
        assert "s4" in {s.name for s in status.sidecars}
        with pytest.raises(UsageError, match="no sidecar named 'nope'"):
            faults.kill_sidecar(name="nope")
    finally:
        stack.down()


def test_restart_redis_starts_an_empty_server_on_the_same_port(redis_url: str) -> None:
    import redis

    from wsop.local import embedded, faults

    url = embedded.ensure_running()
    try:
        client = redis.Redis.from_url(url)
        client.set("teams:{t0}:a", b"\x80")
        client.save()  # a snapshot that must not come back
        out = faults.restart_redis(url)
        assert out["old_pid"] != out["new_pid"] and embedded.status().url == url
        assert client.dbsize() == 0  # the client reconnects to the new, empty server
        client.close()
        with pytest.raises(UsageError, match="restart-redis needs the local stack"):
            faults.restart_redis(redis_url)  # not ours to kill
    finally:
        embedded.stop()


# -- through the CLI ---------------------------------------------------------------------


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_chaos_bad_input_exits_2_before_anything_starts() -> None:
    line = _one_line_error(
        run_wsop("loadtest", "--target", "ws://127.0.0.1:1", "--chaos", "drain@1s"), 2
    )
    assert "--chaos needs --local" in line
    line = _one_line_error(
        run_wsop("loadtest", "--local", "--duration", "5", "--chaos", "drain@9s"), 2
    )
    assert "not inside the 5 s run" in line
    line = _one_line_error(run_wsop("loadtest", "--local", "--chaos", "nuke@1s"), 2)
    assert "unknown action 'nuke'" in line
    assert not (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists()


def test_restart_redis_refuses_a_redis_it_does_not_own(
    redis_url: str, stack_and_redis_stopped: None
) -> None:
    line = _one_line_error(
        run_wsop(
            "loadtest", "--local", "--redis", redis_url, "--duration", "3",
            "--chaos", "restart-redis@1s", timeout=60,
        ),
        2,
    )  # fmt: skip
    assert "restart-redis needs the local stack on the embedded Redis" in line
    assert not (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists()


def test_chaos_run_against_a_real_stack(tmp_path: Path, stack_and_redis_stopped: None) -> None:
    """Every fault kind on a live stack (embedded Redis: restart-redis needs it).

    Independent of the server fixes: the faults happen, the users come back, nothing
    crosses tenants, and the books balance. (`--min-rate-ratio 0.5`: users that are away
    do not send, and on a busy machine their reconnects can take the achieved rate under
    the default 90%; the rate is not what this test is about.)

    `silent_loss == 0` is what the server fixes (presence after a Redis restart,
    scale-down, peer links) are for; it is asserted last, so a failure there is about
    the stack, not the tool.

    Faults run one after another: the 7 s after the last one are slack for a busy machine,
    where starting a sidecar for `scale=3` can take seconds (with 14 s, the rebalance was
    once "not run: the run ended first").
    """
    report = tmp_path / "report"
    result = run_wsop(
        "loadtest", "--local", "--profile", "smoke", "--rate", "100", "--connections", "20",
        "--duration", "18", "--chaos", "kill-sidecar@3s,restart-redis@6s,scale=3@9s,rebalance@11s",
        "--report", str(report), "--json", "--min-rate-ratio", "0.5", timeout=100,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    out = json.loads(result.stdout)
    assert [f["label"] for f in out["faults"]] == [
        "kill-sidecar@3s", "restart-redis@6s", "scale=3@9s", "rebalance@11s",
    ]  # fmt: skip
    assert all(f["ok"] for f in out["faults"]), out["faults"]
    assert [w["fault"] for w in out["windows"]] == [None] + [f["label"] for f in out["faults"]]
    assert out["cross_tenant"] == 0
    assert out["expected_deliveries"] == out["delivered"] + out["lost"]
    assert out["lost"] == sum(out[k] for k in LOSS_CLASSES)
    for key in ("sent", "expected", "delivered", "silent_loss", "reconnects"):
        assert (
            sum(w[key] for w in out["windows"])
            == out[key.replace("expected", "expected_deliveries")]
        )
    # the killed sidecar's clients came back (reconnect + hello), all of them
    assert out["reconnects"] > 0 and out["not_back"] == 0 and out["ready"] == 20
    assert out["reconnect_ms"]["p99"] is not None
    assert out["windows"][1]["reconnects"] > 0  # counted in the kill's window
    assert (report / "loadtest.png").stat().st_size > 0
    assert "wsop-chaos" in (report / "report.html").read_text()
    assert not (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists()
    assert out["windows"][0]["silent_loss"] == 0  # before any fault: the baseline is clean
    # Depends on the server fixes (see the docstring): exit 0 exactly when nothing is silent.
    # Before them (612a223): 600-800 silent losses, all after restart-redis (team messages
    # resolved against online bitmaps nobody re-asserted; acks said undelivered 0), and a
    # drain lost ~50 in live moves. With the presence and peer-link fixes (ee2f81e): 0.
    assert out["silent_loss"] == 0, (out["windows"], out["silent_examples"])
    assert result.returncode == 0, result.stderr
