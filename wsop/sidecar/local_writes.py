"""Writes to the connections this sidecar holds, each one counted.

A recipient counts as reached when at least one of its connections here took the frame;
one with no connection here, or whose every connection refused it (closing, or gone),
is counted as failed by reason (`wsop_deliveries_failed_total`) and returned as not
reached, so the ack's `delivered` is a real count. Split from `wsop.sidecar.delivery`
(which decides where a message goes) because this is the only part that touches the
connections themselves: offsets spliced per user, replaying sessions queued behind
their replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from wsop.recovery_wire import offset_within, with_offset
from wsop.sidecar.metrics import SidecarMetrics
from wsop.sidecar.outbox import Outbox
from wsop.sidecar.router import Router

Offsets = Sequence[str] | None
"""Each user's offset (parallel to a list of users; "" where none could be recorded)."""


class LocalWrites:
    """The frames of one sidecar's deliveries, written to the connections it holds."""

    def __init__(self, router: Router, outbox: Outbox, metrics: SidecarMetrics) -> None:
        self.router = router
        self.outbox = outbox
        self.metrics = metrics

    def deliver(
        self, tenant: str, users: Iterable[Any], frame: str, offsets: Offsets = None
    ) -> tuple[int, int]:
        """Write `frame` to every connection here of `users`: (users reached, users not
        reached — no connection here, or every one refused it: closing, or gone)."""
        if offsets is not None:
            return self._deliver_with_offsets(tenant, users, frame, offsets)
        data = frame.encode()
        reached = absent = refused = written = 0
        connections = self.router.connections
        send = self.outbox.send_bytes
        for user in users:
            conns = connections(tenant, user)
            if not conns:
                absent += 1
                continue
            took = send(conns, data)
            written += took
            if took:
                reached += 1
            else:
                refused += 1
        return self._counted(reached, absent, refused, written)

    def _counted(self, reached: int, absent: int, refused: int, written: int) -> tuple[int, int]:
        self.metrics.messages_out.inc(written)
        if absent:
            self.metrics.failed.labels("no_connection").inc(absent)
        if refused:
            self.metrics.failed.labels("connection_closed").inc(refused)
        return reached, absent + refused

    def _deliver_with_offsets(
        self, tenant: str, users: Iterable[Any], frame: str, offsets: Sequence[str]
    ) -> tuple[int, int]:
        """`deliver` with each user's own frame (its offset spliced in). A session
        that is replaying (`held` is a list) queues it behind the replay instead."""
        reached = absent = refused = written = 0
        connections = self.router.connections
        send = self.outbox.send_one
        plain: bytes | None = None
        for user, offset in zip(users, offsets, strict=True):
            conns = connections(tenant, user)
            if not conns:
                absent += 1
                continue
            if offset:
                data = with_offset(frame, offset).encode()
            else:  # the history could not record it: delivered all the same
                data = plain = plain or frame.encode()
            took = 0
            for conn in conns:
                held = conn.held
                if held is not None:
                    held.append((offset, data))
                    took += 1
                elif (done := conn.replayed) is not None and offset_within(offset, *done):
                    took += 1  # its replay carried it already
                elif send(conn, data):
                    took += 1
            written += took
            if took:
                reached += 1
            else:
                refused += 1
        return self._counted(reached, absent, refused, written)
