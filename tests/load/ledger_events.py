"""Random ledger histories for property tests: sends (direct, team, teams wider than
the compiled settle loop takes), arrivals, acks, refusals, cancels, drops and returns,
settles. Shared by the books-balance property (test_chaos) and the compiled-vs-Python
settling property (test_hot)."""

from __future__ import annotations

from hypothesis import strategies as st

from wsop.load.ledger import Ledger, message_key

EVENT = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 5), st.lists(st.integers(0, 5), max_size=4)),
    st.tuples(st.just("wide"), st.integers(0, 5), st.integers(60, 70)),  # a team of 60–70
    st.tuples(st.just("arrive"), st.integers(0, 69), st.integers(0, 20)),
    st.tuples(st.just("ack"), st.integers(0, 20), st.integers(0, 4)),
    st.tuples(st.just("refuse"), st.integers(0, 20), st.just(0)),
    st.tuples(st.just("cancel"), st.integers(0, 20), st.just(0)),
    st.tuples(st.just("drop"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("back"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("settle"), st.integers(0, 3), st.just(0)),
)


def play(ledger: Ledger, events: list, now: float) -> tuple[int, float]:
    """Apply `events` from time `now`; (messages sent and not cancelled, the time after)."""
    sent: list[int] = []
    cancelled = 0
    for kind, a, b in events:
        now += 0.25
        if kind in ("send", "wide"):
            key = message_key(a, len(sent))
            to = tuple(dict.fromkeys(b)) if kind == "send" else tuple(range(b))
            ledger.sent(key, to, now, team=len(to) > 1)
            sent.append(key)
        elif sent and kind == "arrive":
            ledger.received(a, sent[b % len(sent)], now - 0.1)
        elif sent and kind == "ack":
            ledger.acked(sent[a % len(sent)], 0, b)
        elif sent and kind == "refuse":
            ledger.refused(sent[a % len(sent)], "forbidden")
        elif sent and kind == "cancel":
            key = sent[a % len(sent)]
            cancelled += key in ledger._pending
            ledger.cancel(key)
        elif kind == "drop":
            ledger.dropped(a, now)
        elif kind == "back":
            ledger.back(a, now)
        elif kind == "settle":
            ledger.settle(now + a)
    return len(sent) - cancelled, now
