"""Ack bookkeeping: complete exactly once, when the last awaited item was answered or
timed out; a peer may owe several items (slices, split user lists)."""

from __future__ import annotations

from wsop.sidecar.acks import AckBook, PendingAck


def make(done: list) -> PendingAck:
    return PendingAck(
        None, "m1", started=0.0, done=lambda p: done.append((p.delivered, p.undelivered))
    )


def test_completes_once_after_the_last_answer() -> None:
    book, done = AckBook(), []
    pending = make(done)
    pending.delivered = 1  # delivered locally
    ack_id = book.open(pending)
    pending.expect("s1", 2)
    pending.expect("s2", 3)
    book.settle(ack_id, "s1", 2, 0)
    assert done == []
    book.settle(ack_id, "s1", 2, 0)  # a duplicate answer changes nothing
    book.settle(ack_id, "s2", 1, 2)
    assert done == [(4, 2)] and len(book) == 0
    book.settle(ack_id, "s2", 1, 2)  # late: ignored
    assert done == [(4, 2)]


def test_a_peer_owing_several_items_must_answer_each() -> None:
    book, done = AckBook(), []
    pending = make(done)
    ack_id = book.open(pending)
    for _ in range(3):
        pending.expect("s1", 4096)
    book.settle(ack_id, "s1", 4096, 0)
    book.settle(ack_id, "s1", 4000, 96)
    assert done == []
    book.settle(ack_id, "s1", 10, 4086)
    assert done == [(8106, 4182)]


def test_expired_answers_count_the_users_nobody_answered_for() -> None:
    book, done = AckBook(), []
    pending = make(done)
    ack_id = book.open(pending)
    pending.expect("s1", 5)
    pending.expect("s1", 3)
    pending.expect("s2", 2)
    book.settle(ack_id, "s1", 5, 0)  # one item of s1 answered
    assert book.expire(now=1.0, timeout=10.0) == 0 and done == []
    assert book.expire(now=11.0, timeout=10.0) == 5  # s1's second item and s2's
    assert done == [(5, 5)]
    book.settle(ack_id, "s1", 3, 0)  # the real answer arrives too late: no second ack
    assert done == [(5, 5)]


def test_waiting_on_counts_the_open_acks_of_a_connection() -> None:
    book = AckBook()
    conn, other = object(), object()
    for c in (conn, conn, other):
        p = PendingAck(c, None, 0.0)
        p.expect("s1", 1)
        book.open(p)
    assert book.waiting_on(conn) == 2 and book.waiting_on(object()) == 0
