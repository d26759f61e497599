"""`wsop loadtest`: the ledger's arithmetic, bad input, and real runs against a local stack.

The real runs are short (5-8 s of load) and only ever target 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_wsop
from wsop.errors import UsageError
from wsop.load.ledger import Counters, Ledger, message_key
from wsop.load.profiles import PROFILES, make_plan
from wsop.load.runner import normalize_target
from wsop.local.redis_binary import free_port


def balanced(c: dict) -> bool:
    return c["expected_deliveries"] == c["delivered"] + c["lost"]


# -- the ledger (pure) -------------------------------------------------------------------


def test_ledger_settles_each_message_and_counts_the_odd_ones_apart() -> None:
    ledger = Ledger(grace_s=1.0)
    a, b, c, d = (message_key(0, n) for n in range(4))
    ledger.sent(a, (5,), now=10.0)  # direct: arrives once, then a duplicate
    ledger.sent(b, (5, 6, 7), now=10.0, team=True)  # team of 3: two arrive
    ledger.sent(c, (5,), now=10.0)  # direct: never arrives
    ledger.sent(d, (5,), now=10.0)  # the send failed: cancelled
    ledger.cancel(d)
    assert ledger.received(5, a) and not ledger.received(5, a)
    assert ledger.received(5, b) and ledger.received(6, b)
    ledger.settle(now=10.5)
    assert ledger.counters.expected == 0  # still inside the grace period
    ledger.settle(now=11.5)
    assert not ledger.received(7, b)  # after settling: late
    assert not ledger.received(7, message_key(3, 0))  # never sent here: unexpected
    snap = ledger.snapshot()
    assert snap["sent"] == 3 and snap["direct"] == 2 and snap["team"] == 1
    assert snap["send_failed"] == 1
    assert (snap["expected"], snap["delivered"], snap["lost"]) == (5, 3, 2)
    assert snap["expected"] == snap["delivered"] + snap["lost"]
    assert (snap["duplicates"], snap["late"], snap["unexpected"]) == (1, 1, 1)
    assert snap["pending"] == 0
    # no drop, no ack: both losses are silent
    assert snap["silent_loss"] == 2 and snap["acks_missing"] == 3


def test_ledger_surplus_never_hides_a_loss() -> None:
    ledger = Ledger(grace_s=0.0)
    key = message_key(1, 0)
    ledger.sent(key, (1,), now=0.0, team=True)
    assert not ledger.received(2, key)  # a receiver that was not expected
    ledger.settle(now=1.0, everything=True)
    c = ledger.counters
    assert (c.expected, c.delivered, c.lost, c.surplus) == (1, 0, 1, 1)


def test_counters_total_sums_workers_and_spans_send_times() -> None:
    one = Counters(sent=3, lost=1, first_send=5.0, last_send=9.0).to_json()
    two = Counters(sent=4, duplicates=2, first_send=4.0, last_send=8.0).to_json()
    total = Counters.total([one, two])
    assert (total.sent, total.lost, total.duplicates) == (7, 1, 2)
    assert (total.first_send, total.last_send) == (4.0, 9.0)


# -- profiles and targets (pure) ---------------------------------------------------------


def test_profiles_resolve_overrides_into_a_plan() -> None:
    assert set(PROFILES) == {"smoke", "ramp", "30k", "spike", "soak"}
    big = make_plan("30k")
    assert big.connections == 3000 and big.rate == 30000
    assert big.planned_messages == pytest.approx(30000 * big.duration)
    ramp = make_plan("ramp", rate=1000, duration=50, workers=2)
    assert [s.rate for s in ramp.stages] == [200, 400, 600, 800, 1000]
    assert ramp.duration == pytest.approx(50)
    assert ramp.tenants == 2 * ramp.tenants_per_worker
    assert ramp.users_per_tenant * ramp.tenants >= ramp.connections
    small = make_plan("smoke", rate=200, connections=20, duration=5)
    assert (small.connections, small.stages[0].seconds) == (20, 5)
    with pytest.raises(UsageError, match="valid profiles: smoke, ramp, 30k, spike, soak"):
        make_plan("nope")
    for bad in (0, -1, float("nan")):
        with pytest.raises(UsageError, match="--rate"):
            make_plan("smoke", rate=bad)


def test_target_must_be_a_ws_url() -> None:
    assert normalize_target("ws://127.0.0.1:8765/ws") == "ws://127.0.0.1:8765"
    assert normalize_target("wss://lb.example:443/") == "wss://lb.example:443"
    for bad in ("http://127.0.0.1:8765", "127.0.0.1:8765", "ws://", "ws://h:99999"):
        with pytest.raises(UsageError):
            normalize_target(bad)


# -- bad input through the real CLI ------------------------------------------------------


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_bad_input_exits_with_one_line() -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    line = _one_line_error(run_wsop("loadtest", "--target", dead, "--duration", "1"), 1)
    assert dead in line
    line = _one_line_error(run_wsop("loadtest", "--target", "http://127.0.0.1:1"), 2)
    assert "ws://" in line
    line = _one_line_error(run_wsop("loadtest", "--target", dead, "--profile", "huge"), 2)
    assert "smoke, ramp, 30k, spike, soak" in line
    for rate in ("0", "-5"):
        line = _one_line_error(run_wsop("loadtest", "--target", dead, "--rate", rate), 2)
        assert "--rate" in line
    too_many = str(2 * (os.cpu_count() or 1) + 1)
    line = _one_line_error(run_wsop("loadtest", "--target", dead, "--workers", too_many), 2)
    assert "--workers" in line
    _one_line_error(run_wsop("loadtest", "--local", "--target", dead), 2)


# -- failures: stable names, early stop (pure) -------------------------------------------


def _refused(date: str) -> Exception:
    from websocket import WebSocketBadStatusException

    headers = {"date": date, "content-type": "text/plain"}
    body = b"missing token: pass ?token=... or 'Authorization: Bearer ...'\n"
    return WebSocketBadStatusException(
        f"Handshake status 401 Unauthorized -+-+- {headers} -+-+- {body!r}", 401, "Unauthorized",
        headers, body,
    )  # fmt: skip


def test_failure_names_are_stable_across_attempts() -> None:
    from wsop.load.failures import stable_reason

    one = stable_reason(_refused("Mon, 01 Jan 2024 10:00:00 GMT"))
    two = stable_reason(_refused("Mon, 01 Jan 2024 10:00:01 GMT"))
    assert (
        one
        == two
        == "HTTP 401 Unauthorized: missing token: pass ?token=... or "
        + ("'Authorization: Bearer ...'")
    )
    refused = stable_reason(ConnectionRefusedError(111, "Connection refused"))
    assert refused == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert "0x" not in stable_reason(RuntimeError("object at 0x7f3a2b1c0d90 gone"))


def test_early_stop_only_when_the_stack_refuses_everyone() -> None:
    from wsop.load.failures import early_stop

    url = "ws://127.0.0.1:9/ws"
    refused = {"connect_errors": {"HTTP 401 Unauthorized: missing token": 5}, "ready": 0}
    assert early_stop(refused, 5, url, False) == (
        "401 Unauthorized from ws://127.0.0.1:9/ws: set WSOP_SECRET or use --local"
    )
    assert "is WSOP_SECRET the stack's secret?" in early_stop(refused, 5, url, True)
    assert early_stop(refused, 50, url, False) is None  # 5 of 50: keep waiting
    assert early_stop({**refused, "ready": 1}, 5, url, False) is None  # someone is in
    down = {"connect_errors": {"ConnectionRefusedError: [Errno 111] Connection refused": 99}}
    assert early_stop(down, 5, url, False) is None  # may come up: the connect phase decides


# -- real runs ---------------------------------------------------------------------------


def test_a_stack_that_refuses_every_user_stops_the_run_with_the_cause(
    redis_url: str, no_stack_left: None
) -> None:
    """Against the default (JWT) stack without WSOP_SECRET: one line naming the 401 and
    what to do, exit 1, long before the run's own length (it used to run to the end and
    report 0 errors and 0 of N planned messages)."""
    standin = shlex.join([sys.executable, str(ROOT / "tests" / "standin_sidecar.py")])
    env = {"WSOP_SECRET": "", "WSOP_SIDECAR_CMD": standin}
    up = run_wsop(
        "up", "--detach", "--sidecars", "1", "--redis", redis_url, "--port", str(free_port()),
        "--json", env=env,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    lb = json.loads(up.stdout)["lb"]["url"]
    started = time.monotonic()
    result = run_wsop(
        "loadtest", "--target", lb, "--duration", "30", "--connections", "5", "--json",
        env=env, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 20
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: 401 Unauthorized from {lb}/ws: set WSOP_SECRET or use --local"
    ]


@pytest.fixture
def no_stack_left() -> Iterator[None]:
    yield
    if (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists():
        run_wsop("down")


def test_healthy_run_with_two_workers_accounts_for_every_delivery(
    redis_url: str, tmp_path: Path, no_stack_left: None
) -> None:
    report = tmp_path / "report"
    result = run_wsop(
        "loadtest", "--local", "--redis", redis_url, "--duration", "5", "--rate", "200",
        "--connections", "20", "--workers", "2", "--report", str(report), "--json",
        timeout=80,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert balanced(out) and out["lost"] == 0 and out["duplicates"] == 0
    assert out["workers"] == 2 and out["workers_settled"] == 2 and out["ready"] == 20
    # one pool per worker process, each reporting its own CPU over the run phase
    assert set(out["generator_cpu"]) == {"0", "1"} and out["generator_limited"] is False
    assert out["generator_us_per_msg"] > 0 and out["generator_behind"] <= 4
    assert out["sent"] == out["direct"] + out["team"] and out["team"] > 0
    assert 0.9 <= out["rate_ratio"] <= 1.1 and out["msgs_per_s"] > 150
    # team messages fan out: every member online gets one, the sender included
    assert out["expected_deliveries"] > out["sent"]
    assert out["ack_mismatch"] == 0 and out["errors"] == 0 and out["acks_missing"] == 0
    assert out["latency_ms"]["p50"] is not None and out["latency_ms"]["p99"] >= 0
    for name in ("report.html", "locust_stats.csv", "locust_stats_history.csv", "loadtest.png"):
        assert (report / name).stat().st_size > 0, name
    assert 'id="wsop-glossary"' in (report / "report.html").read_text()
    # the run started the stack, so it stopped it
    assert not (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists()


def _status() -> dict:
    result = run_wsop("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_killing_a_sidecar_mid_run_is_reported_as_loss(redis_url: str, no_stack_left: None) -> None:
    up = run_wsop(
        "up", "--detach", "--insecure", "--redis", redis_url, "--port", str(free_port()), "--json"
    )
    assert up.returncode == 0, up.stderr
    run = subprocess.Popen(
        [sys.executable, "-m", "wsop.cli.main", "loadtest", "--local", "--duration", "8",
         "--rate", "200", "--connections", "20", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = _status()
        if status["lb"]["connections"] == 20:
            break
        time.sleep(0.3)
    else:
        run.kill()
        pytest.fail(f"the load users never all connected: {status}")
    time.sleep(3.0)  # the connect phase settles for 2 s, then messages flow
    victim = status["sidecars"][1]
    os.kill(victim["pid"], signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 1, stderr
    out = json.loads(stdout)
    assert balanced(out)
    assert out["lost"] > 0 and out["disconnects"] > 0
    assert "lost" in stderr.strip().splitlines()[-1]
    # the stack was already running: the load test leaves it up
    assert (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists()


# -- the frame reader (pure) -------------------------------------------------------------


def _frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"") -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + payload


def test_frame_reader_splits_bulk_reads_at_any_byte() -> None:
    from wsop.load.frames import OP_PING, OP_TEXT, FrameError, FrameReader

    big = b"x" * 70000
    stream = (
        _frame(OP_TEXT, b'{"a":1}')
        + _frame(OP_TEXT, b"y" * 300)
        + _frame(OP_TEXT, b"par", fin=False)
        + _frame(OP_PING, b"p")  # a control frame inside a fragmented message
        + _frame(0, b"ts", fin=True)
        + _frame(OP_TEXT, big)
        + _frame(OP_TEXT, b"masked", mask=b"\x01\x02\x03\x04")
    )
    want = [
        (OP_TEXT, b'{"a":1}'), (OP_TEXT, b"y" * 300), (OP_PING, b"p"),
        (OP_TEXT, b"parts"), (OP_TEXT, big), (OP_TEXT, b"masked"),
    ]  # fmt: skip
    for size in (1, 7, 4096, len(stream)):
        reader, got = FrameReader(), []
        for i in range(0, len(stream), size):
            got += reader.feed(stream[i : i + size])
        assert got == want, size
    with pytest.raises(FrameError):
        FrameReader().feed(_frame(0, b"orphan"))
    with pytest.raises(FrameError):
        FrameReader().feed(bytes([0xC1, 0]))  # RSV1 without an extension


# -- the report (pure) -------------------------------------------------------------------

TIMELINE = [
    {"t": 2.0, "phase": "connect", "target_rate": 0.0, "msgs_per_s": 0.0, "p50": None},
    {"t": 3.0, "phase": "run", "target_rate": 50.0, "msgs_per_s": 0.0, "p50": None},
    {"t": 4.0, "phase": "run", "target_rate": 50.0, "msgs_per_s": 54.0, "p50": None},
    {"t": 5.0, "phase": "run", "target_rate": 50.0, "msgs_per_s": 49.9, "p50": 11},
    {"t": 6.0, "phase": "drain", "target_rate": 0.0, "msgs_per_s": 50.0, "p50": 7},
    {"t": 7.0, "phase": "drain", "target_rate": 0.0, "msgs_per_s": 0.0, "p50": 7},
]


def test_plot_series_line_up_with_the_target_and_leave_gaps(tmp_path: Path) -> None:
    import math

    from wsop.load.report import latency_or_gap, plot, sent_steps

    xs, sent = sent_steps(TIMELINE)
    # the rate measured over 3→4 s starts at 3 s, like the 50 msg/s target it answers
    assert dict(zip(xs, sent, strict=True))[3.0] == 54.0
    assert dict(zip(xs, sent, strict=True))[6.0] == 0.0  # the drain sends nothing
    gaps = [math.isnan(latency_or_gap(p, "p50")) for p in TIMELINE]
    # nothing before the first sample, a value while sending, a gap through the drain
    assert gaps == [True, True, True, False, False, True]
    png = plot({"timeline": TIMELINE, "plan": {"profile": "smoke"}}, tmp_path / "p.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_report_html_starts_with_a_glossary(tmp_path: Path) -> None:
    from wsop.load.report import annotate_html

    page = tmp_path / "report.html"
    page.write_text(
        '<html><head><script>var s = "<body>";</script></head>\n'
        '  <body>\n    <div id="root"></div>\n  </body></html>'
    )
    result = {"sent": 204, "delivered": 332, "expected_deliveries": 332, "lost": 0, "faults": []}
    annotate_html(page, result)
    text = page.read_text()
    assert text.index('id="wsop-glossary"') < text.index('<div id="root">')
    assert text.index('id="wsop-glossary"') > text.index("</head>")
    assert "count <i>deliveries</i>, not messages" in text and "204 in this run" in text
