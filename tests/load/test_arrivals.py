"""The ledger's fast arrival path reads every arrival as the plain rule does; the
latency book's packed samples unpack exactly.

`Ledger.received` tells a duplicate from the message's arrival bits while it is pending
and from `Arrivals` after settling. The reference here is the rule those replace: one
set of (receiver, key) pairs, checked first, for the whole run.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wsop.load.arrivals import Arrivals
from wsop.load.ledger import Ledger, message_key

KINDS = ("duplicates", "cross_tenant", "late", "unexpected", "surplus")


class Reference:
    """Arrivals read the plain way (what `Ledger.received` did before its fast path)."""

    def __init__(self, tenants: int) -> None:
        self.tenants = tenants
        self.seen: set[tuple[int, int]] = set()
        self.pending: dict[int, list] = {}  # key -> [slots, refused, sent at]
        self.booked: dict[int, tuple[int, ...]] = {}
        self.upto: dict[int, int] = {}
        self.counts = dict.fromkeys(KINDS, 0)

    def sent(self, key: int, slots: tuple[int, ...], at: float) -> None:
        self.pending[key] = [slots, False, at]
        self.booked[key] = slots

    def refused(self, key: int) -> None:
        if key in self.pending:
            self.pending[key][1] = True

    def settle(self, cutoff: float) -> None:
        for key in [k for k, e in self.pending.items() if e[2] <= cutoff]:
            del self.pending[key]
            sender, seq = key >> 32, key & 0xFFFFFFFF
            self.upto[sender] = max(self.upto.get(sender, -1), seq)

    def received(self, receiver: int, key: int) -> bool:
        if (receiver, key) in self.seen:
            self.counts["duplicates"] += 1
            return False
        self.seen.add((receiver, key))
        if (key >> 32) % self.tenants != receiver % self.tenants:
            self.counts["cross_tenant"] += 1
            return False
        entry = self.pending.get(key)
        if entry is None:
            late = (key & 0xFFFFFFFF) <= self.upto.get(key >> 32, -1)
            self.counts["late" if late else "unexpected"] += 1
            return False
        if entry[1] or receiver not in entry[0]:
            self.counts["surplus"] += 1
            return False
        return True


_events = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 3), st.lists(st.integers(0, 5), max_size=3)),
        st.tuples(st.just("arrive"), st.integers(0, 11), st.integers(0, 30)),
        st.tuples(st.just("refuse"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("settle"), st.just(0), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(_events, st.integers(1, 2))
def test_arrivals_are_read_as_the_plain_rule_reads_them(events: list, tenants: int) -> None:
    ledger = Ledger(grace_s=1.0, tenants_per_worker=tenants)
    ref = Reference(tenants)
    keys: list[int] = []
    seqs: dict[int, int] = {}
    now = 100.0
    for kind, a, b in events:
        now += 0.25
        if kind == "send":
            key = message_key(a, seqs.get(a, 0))
            seqs[a] = seqs.get(a, 0) + 1
            slots = tuple(dict.fromkeys(b))
            ledger.sent(key, slots, now)
            ref.sent(key, slots, now)
            keys.append(key)
        elif keys and kind == "arrive":
            key = keys[b % len(keys)]
            slots = ref.booked[key]
            a = slots[a % len(slots)] if a % 2 and slots else a // 2  # mostly a recipient
            assert ledger.received(a, key, now) == ref.received(a, key), (a, key)
        elif keys and kind == "refuse":
            ledger.refused(keys[a % len(keys)], "forbidden")
            ref.refused(keys[a % len(keys)])
        elif kind == "settle":
            ledger.settle(now)
            ref.settle(now - 1.0)
    snap = ledger.snapshot()
    assert {k: snap[k] for k in KINDS} == ref.counts


def test_direct_arrivals_are_kept_by_sequence_and_the_rest_in_bitmaps() -> None:
    arrivals = Arrivals()
    arrivals.add_direct(7, message_key(3, 0))
    arrivals.add_direct(8, message_key(3, 2))  # a gap (seq 1 cancelled): still by seq
    arrivals.add_direct(9, message_key(3, 1 << 20))  # far past the end: a bitmap
    arrivals.add(4, message_key(3, 1))
    assert arrivals.seen(7, message_key(3, 0)) and arrivals.seen(8, message_key(3, 2))
    assert arrivals.seen(9, message_key(3, 1 << 20)) and arrivals.seen(4, message_key(3, 1))
    assert not arrivals.seen(8, message_key(3, 0)) and not arrivals.seen(7, message_key(3, 1))
    assert not arrivals.seen(-1, message_key(3, 1))  # an empty place is nobody's
    assert not arrivals.seen(7, message_key(4, 0))


def test_latency_samples_unpack_into_whole_millisecond_histograms() -> None:
    from wsop.load.latency import LatencyBook

    book = LatencyBook()
    for us, size in ((400, 90), (1_600, 91), (2_400, 92), (150_000, 93), (-700, 94)):
        book.add("direct", us, size)  # a clock step back can make one negative
    book.add("team", 7_499, 200)
    assert book.count("direct") == 5
    taken = book.take()
    assert taken["direct"] == ({0: 1, 2: 2, 150: 1, -1: 1}, 153_700, 460)
    assert taken["team"] == ({7: 1}, 7_499, 200)
    assert book.take() == {} and book.count("direct") == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-(10**6), 10**14), st.integers(0, 1000)), min_size=1))
def test_latency_histograms_round_every_sample_half_up(samples: list[tuple[int, int]]) -> None:
    """numpy's histogram and the Python one (latencies past int64) agree with the rule."""
    from wsop.load.latency import LatencyBook

    book = LatencyBook()
    for us, size in samples:
        book.add("direct", us, size)
    hist, total_us, length = book.take()["direct"]
    want: dict[int, int] = {}
    for us, _ in samples:
        want[(us + 500) // 1000] = want.get((us + 500) // 1000, 0) + 1
    assert hist == want
    assert (total_us, length) == (sum(u for u, _ in samples), sum(s for _, s in samples))
