"""Ack bookkeeping: complete exactly once, when the last owner answered or timed out."""

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
    pending.waiting.update({"s1": 2, "s2": 3})
    book.settle(ack_id, "s1", 2, 0)
    assert done == []
    book.settle(ack_id, "s1", 2, 0)  # a duplicate answer changes nothing
    book.settle(ack_id, "s2", 1, 2)
    assert done == [(4, 2)] and len(book) == 0
    book.settle(ack_id, "s2", 1, 2)  # late: ignored
    assert done == [(4, 2)]


def test_expired_answers_count_as_undelivered() -> None:
    book, done = AckBook(), []
    pending = make(done)
    ack_id = book.open(pending)
    pending.waiting.update({"s1": 5})
    assert book.expire(now=1.0, timeout=10.0) == 0 and done == []
    assert book.expire(now=11.0, timeout=10.0) == 5
    assert done == [(0, 5)]
    book.settle(ack_id, "s1", 5, 0)  # the real answer arrives too late: no second ack
    assert done == [(0, 5)]
