"""The compiled hot loops (`wsop/load/_hot.c`) against their Python twins.

Same pool, same bytes from the stack, same due messages: the ledger, the connection
state and the failures must come out the same whichever twin ran. No network: each
connection is one end of a socketpair, the test holds the other (the stack's end).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.load.ledger_events import EVENT, play
from wsop.load.frames import FrameReader, apply_mask
from wsop.load.hot import compiled
from wsop.load.ledger import message_key
from wsop.load.pool import Pool
from wsop.load.profiles import make_plan
from wsop.load.wire import OUT_CAP

HOT = compiled()
needs_hot = pytest.mark.skipif(HOT is None, reason="wsop.load._hot is not built here")
TWINS = [pytest.param(True, id="compiled", marks=needs_hot), pytest.param(False, id="python")]


class NullHooks:
    """A pool whose connections the test attaches by hand."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, str]] = []

    def connect(self, pool: Any, conn: Any) -> None:
        pass

    def wait(self, timeout: float) -> None:
        pass

    def sleep(self, seconds: float) -> None:
        pass

    def event(self, name: str, ms: float) -> None:
        pass

    def fail(self, name: str, reason: str, ms: float = 0.0) -> None:
        self.failures.append((name, reason))

    def spawned(self, count: int, of: int) -> None:
        pass

    def flush(self, book: Any) -> None:
        pass


def _pool(hot: bool, connections: int = 4) -> tuple[Pool, list[socket.socket]]:
    plan = make_plan("smoke", rate=100, connections=connections, duration=60, team_share=0)
    plan = replace(plan, grace_s=3600.0)  # nothing settles while the test runs
    pool = Pool(plan, 0, NullHooks())
    if not hot:
        pool.hot = None
    peers = []
    for conn in pool.conns:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.settimeout(2)
        pool.attach(conn, ours)
        pool._hello_answered(conn)
        peers.append(theirs)
    for peer in peers:  # the hellos
        peer.recv(65536)
    pool.ledger.run_started_at = 1000.0
    return pool, peers


def _close(pool: Pool, peers: list[socket.socket]) -> None:
    pool.stop()
    for peer in peers:
        peer.close()


def _frame(payload: bytes, first: int = 0x81) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    return bytes((first, 126)) + n.to_bytes(2, "big") + payload


NOW_US = int(time.time() * 1e6)

# what the stack says to a generator: the fast layouts and everything around them
numbers = st.one_of(st.integers(0, 40), st.integers(10**17, 10**21))
delivery = st.builds(
    lambda worker, sender, seq, ts, teams, offset: (
        b'{"type":"message","from":%d,"data":[%d,%d,%d,%d],%s"x":1%s}'
        % (
            sender,
            worker,
            sender,
            seq,
            ts,
            b'"teams":["a"],' if teams else b"",
            b',"offset":"%s"' % offset if offset is not None else b"",
        )
    ),  # fmt: skip
    st.sampled_from([0, 0, 0, 1]),
    st.integers(0, 3),
    numbers,
    st.one_of(st.just(NOW_US), st.integers(0, 10**19)),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from([b"1-0", b"17-3", b""])),
)
ack = st.builds(
    lambda seq, d, u: (
        b'{"type":"ack","id":"%d","delivered":%d%s}'
        % (seq, d, b',"undelivered":%d' % u if u is not None else b"")
    ),
    numbers,
    st.integers(0, 3),
    st.one_of(st.none(), st.integers(0, 3)),
)
other = st.sampled_from(
    [
        b'{"type":"recovered","ok":true}',
        b'{"type":"error","code":"rate_limited","id":"3"}',
        b'{"type":"ack","id":"x","delivered":1}',
        b"not json",
        b'{"type":"message","from":0,"data":"hello"}',
    ]
)
payloads = st.lists(st.one_of(delivery, delivery, ack, other), min_size=1, max_size=12)
wire_frame = st.one_of(
    payloads.map(lambda ps: [_frame(p) for p in ps]),
    st.just([bytes((0x89, 2)) + b"hi"]),  # a ping
    st.just([_frame(b'{"type":"message","from":0,"data":[0,1,2,3]' + b" " * 130 + b"}")]),
    st.just([bytes((0xC1, 1)) + b"x"]),  # reserved bits: a bad frame, the connection drops
)


def _book(pool: Pool) -> None:
    for slot in range(len(pool.conns)):
        for seq in range(30):
            pool.ledger.sent(message_key(slot, seq), (seq % 4,), 1000.0 + seq)


def _state(pool: Pool, hooks: NullHooks) -> dict[str, Any]:
    snap = pool.ledger.snapshot()
    return {
        "ledger": snap,
        "masks": {k: e[1] for k, e in pool.ledger._pending.items()},
        "acks": {k: e[2] for k, e in pool.ledger._pending.items()},
        "offsets": [c.offset for c in pool.conns],
        "replaying": [c.replaying for c in pool.conns],
        "connected": [c.sock is not None for c in pool.conns],
        "latency": {k: sorted(s & 0xFFFFFFFF for s in v) for k, v in pool.latency.samples.items()},
        "failures": hooks.failures,
    }


@needs_hot
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(wire_frame, min_size=1, max_size=6).map(lambda f: sum(f, [])),
       cuts=st.lists(st.integers(1, 400), max_size=4))  # fmt: skip
def test_reading_the_same_bytes_books_the_same(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    chunks, at = [], 0
    for cut in sorted(set(cuts)):  # every split point the wire may choose
        if at < cut < len(data):
            chunks.append(data[at:cut])
            at = cut
    chunks.append(data[at:])
    states = []
    for hot in (True, False):
        pool, peers = _pool(hot)
        _book(pool)
        pool.conns[1].replaying = True  # a replay in progress on one of them
        for chunk in chunks:
            for i in (0, 1):
                if pool.conns[i].sock is not None:
                    peers[i].sendall(chunk)
            pool.step(time.monotonic())
        pool.step(time.monotonic())
        states.append(_state(pool, pool.hooks))
        _close(pool, peers)
    assert states[0] == states[1]


def _unmask(raw: bytes) -> list[dict[str, Any]]:
    out = []
    pos = 0
    while pos < len(raw):
        n = raw[pos + 1] & 0x7F
        key = raw[pos + 2 : pos + 6]
        out.append(json.loads(apply_mask(raw[pos + 6 : pos + 6 + n], key)))
        pos += 6 + n
    return out


@pytest.mark.parametrize("hot", TWINS)
def test_sending_due_messages_books_what_leaves(hot: bool) -> None:
    """Each sent frame is booked for its recipient before it leaves; the connections the
    loop must skip (away, blocked) are counted, a queue is appended to, never jumped."""
    pool, peers = _pool(hot, connections=6)
    pool.conns[2].ready = False  # away (reconnecting)
    pool.conns[3].out = bytearray(OUT_CAP + 1)  # the stack is not reading it: blocked
    pool.conns[4].out = bytearray(b"queued")  # a queue: the frame goes behind it
    pool.pacer.set_rate(1000.0, 0.0)
    while pool._send_due(0.024):  # 25 due: every connection about four times
        pass
    got = {i: _unmask(peers[i].recv(65536)) for i in (0, 1, 5)}
    pending = pool.ledger._pending
    tw = pool.plan.tenants_per_worker
    for i, frames in got.items():
        conn = pool.conns[i]
        assert [f["data"][2] for f in frames] == list(range(len(frames)))
        for f in frames:
            assert f["type"] == "direct" and f["data"][:2] == [0, conn.slot]
            assert f["id"] == str(f["data"][2])
            assert f["to"] in pool.member_list[conn.tenant]
            entry = pending[message_key(conn.slot, f["data"][2])]
            assert entry[0] == (f["to"] * tw + conn.tenant_index,)
    queued = pool.conns[4].out
    assert queued.startswith(b"queued") and len(queued) > 6
    counts = {"away": pool.away, "blocked": pool.blocked, "cursor": pool.cursor}
    assert counts["away"] >= 4 and counts["blocked"] >= 4
    c = pool.ledger.counters
    assert c.sent == sum(conn.seq for conn in pool.conns) == c.direct
    assert c.sent + pool.away + pool.blocked == 25
    assert len(pool.ledger._order) == len(pending) == c.sent == pool.ledger.windows[0]["sent"]
    assert 0 < c.first_send <= c.last_send
    _close(pool, peers)


@pytest.mark.parametrize("hot", TWINS)
def test_a_send_the_stack_refuses_is_cancelled_and_drops_the_connection(hot: bool) -> None:
    pool, peers = _pool(hot, connections=2)
    peers[0].close()  # the stack's end is gone: the send fails with EPIPE
    pool.pacer.set_rate(1000.0, 0.0)
    pool._send_due(0.004)
    assert pool.conns[0].sock is None  # dropped, to reconnect
    assert ("disconnect", "send failed") in pool.hooks.failures
    assert pool.ledger.counters.send_failed >= 1
    assert all(k >> 32 != pool.conns[0].slot for k in pool.ledger._pending)
    _close(pool, peers)


@pytest.mark.parametrize("hot", TWINS)
def test_a_frame_split_over_two_reads_is_finished_by_the_next(hot: bool) -> None:
    """The fast frames before it are booked at once, the rest goes through the
    FrameReader, and the next read finishes it."""
    pool, peers = _pool(hot)
    _book(pool)
    msg = _frame(b'{"type":"message","from":1,"data":[0,1,2,%d],"x":1}' % NOW_US)
    peers[0].sendall(msg + msg[:5])
    pool.step(time.monotonic())
    assert not pool.conns[0].reader.idle
    peers[0].sendall(msg[5:])
    pool.step(time.monotonic())
    assert pool.conns[0].reader.idle
    assert pool.ledger.counters.duplicates == 1  # the second copy of the same message
    reader = FrameReader()
    assert reader.feed(msg) == [(1, msg[2:])]
    _close(pool, peers)


@pytest.mark.parametrize("hot", TWINS)
def test_a_garbled_delivery_is_unexpected_not_a_crash_or_another_message(hot: bool) -> None:
    """A seq past 32 bits would name another sender's message (and one past 64 bits
    crashed the arrival bitmaps); negative or non-integer fields are no generator's."""
    pool, peers = _pool(hot)
    _book(pool)
    bad = [
        b'{"type":"message","from":0,"data":[0,0,%d,%d],"x":1}' % (2**64, NOW_US),
        b'{"type":"message","from":0,"data":[0,0,%d,%d],"x":1}' % (2**32 + 1, NOW_US),
        b'{"type":"message","from":0,"data":[0,-1,2,%d],"x":1}' % NOW_US,
        b'{"type":"message","from":0,"data":[0,1,2.5,%d],"x":1}' % NOW_US,
        b'{"type":"message","from":0,"data":[0,1,"2",%d],"x":1}' % NOW_US,
    ]
    peers[0].sendall(b"".join(_frame(p) for p in bad))
    pool.step(time.monotonic())
    counters = pool.ledger.counters
    assert counters.unexpected == len(bad)
    assert pool.conns[0].sock is not None  # still connected
    assert not any(e[1] for e in pool.ledger._pending.values())  # nothing credited
    _close(pool, peers)


# -- settling: the compiled loop against Ledger._settle_entry --------------------------


def _replay(events: list, compiled_settle: bool) -> dict[str, Any]:
    import wsop.load.ledger as ledger_module

    saved = ledger_module._settle_span
    ledger_module._settle_span = saved if compiled_settle else None
    try:
        ledger = ledger_module.Ledger(1.0, 2, (3.0,), 0)
        ledger.run_started_at = 1000.0
        _, now = play(ledger, events, 1000.0)
        ledger.settle(now + 10, everything=True)
        return {
            "snapshot": ledger.snapshot(),
            "upto": ledger._settled_upto,
            "rows": {s: list(r) for s, r in ledger._arrivals.rows.items()},
            "bitmaps": {s: list(b) for s, b in ledger._arrivals._bitmaps.items()},
            "silent": ledger._silent,
        }
    finally:
        ledger_module._settle_span = saved


@needs_hot
@settings(max_examples=150, deadline=None)
@given(st.lists(EVENT, max_size=60))
def test_settling_compiled_closes_the_same_books(events: list) -> None:
    assert _replay(events, True) == _replay(events, False)
