"""Delivery: the router's decisions (`wsop.sidecar.router`, pure) carried out.

Local writes through the outbox, forwarding to owners and holders over the peer links,
retries of unknown recipients within the grace after a membership change, and acks that
wait until every owner has answered — so `delivered` is a real count and whatever could
not be delivered is counted (`wsop_deliveries_failed_total{reason}`) and reported in the
ack's `undelivered`. The client side (sessions, parsing, the ACL) lives in `app.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from wsop.sidecar.acks import AckBook, PendingAck
from wsop.sidecar.metrics import SidecarMetrics
from wsop.sidecar.outbox import Outbox
from wsop.sidecar.peer_codec import (
    TO_HOLDER,
    TO_OWNER,
    TO_OWNER_FINAL,
    Ack,
    Deliver,
    PeerItem,
)
from wsop.sidecar.peers import PeerLinks
from wsop.sidecar.router import DeliveryPlan, HolderChange, Router

ACK_TIMEOUT_S = 10.0
# After a membership change, peers adopt it a few hundred ms apart: within this grace,
# a recipient nobody seems to hold is retried for a while rather than reported lost.
MEMBERSHIP_GRACE_S = 3.0
RETRY_WINDOW_S = 1.5
RETRY_INTERVAL_S = 0.1
RETRY = "~retry"  # pseudo-peer a PendingAck waits on while retries run


class Delivery:
    """Owns the peer links and the ack book of one sidecar named `name`."""

    def __init__(
        self,
        name: str,
        admin_token: str | None,
        router: Router,
        outbox: Outbox,
        metrics: SidecarMetrics,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.name = name
        self.router = router
        self.outbox = outbox
        self.metrics = metrics
        self.peers = PeerLinks(name, admin_token, self.lost)
        self.acks = AckBook()
        self.membership_changed_at = time.monotonic()
        self._spawn = spawn

    def membership_changed(self) -> None:
        """Start the grace in which unknown recipients are retried, not reported."""
        self.membership_changed_at = time.monotonic()

    def deliver_local(self, tenant: str, users: list[Any], frame: str) -> int:
        conns = []
        for user in users:
            conns.extend(self.router.connections(tenant, user))
        if conns:
            self.metrics.messages_out.inc(self.outbox.send(conns, frame))
        return len(users)

    def fan_out(self, tenant: str, plan: DeliveryPlan, frame: str) -> int:
        """Local + holder deliveries; returns the users reached."""
        reached = set(plan.local)
        self.deliver_local(tenant, plan.local, frame)
        for holder, users in plan.holders.items():
            self.peers.send(holder, Deliver(tenant, users, 0, TO_HOLDER, frame))
            self.metrics.forwarded.inc(len(users))
            reached.update(users)
        return len(reached)

    def execute(
        self, tenant: str, plan: DeliveryPlan, frame: str, pending: PendingAck, mode: str
    ) -> None:
        """Deliver what is ours, forward the rest; `pending` completes when all answered."""
        pending.delivered = self.fan_out(tenant, plan, frame)
        retry = bool(plan.unreachable) and self.in_grace()
        if plan.unreachable and not retry:
            self._unreachable(pending, len(plan.unreachable))
        if not plan.peers and not retry:
            pending.done(pending)  # the common local case: no bookkeeping at all
            return
        ack_id = self.acks.open(pending)
        # Everything awaited is booked before anything is sent: a link that is already
        # down answers (as lost) synchronously, and must not complete the ack early.
        for owner, users in plan.peers.items():
            pending.waiting[owner] = len(users)
        if retry:
            pending.waiting[RETRY] = len(plan.unreachable)
        for owner, users in plan.peers.items():
            self.metrics.forwarded.inc(len(users))
            self.peers.send(owner, Deliver(tenant, users, ack_id, mode, frame))
        if retry:
            self._spawn(self._retry(tenant, plan.unreachable, frame, ack_id))

    def _unreachable(self, pending: PendingAck, count: int) -> None:
        self.metrics.failed.labels("no_connection").inc(count)
        pending.undelivered += count

    def in_grace(self) -> bool:
        return time.monotonic() - self.membership_changed_at < MEMBERSHIP_GRACE_S

    async def _retry(self, tenant: str, users: list[Any], frame: str, ack_id: int) -> None:
        """Right after a membership change, holders re-register with their new owners a
        few hundred ms late: retry users we know no connection of instead of dropping."""
        delivered, missing = 0, users
        deadline = time.monotonic() + RETRY_WINDOW_S
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(RETRY_INTERVAL_S)
            plan = self.router.plan(tenant, missing, as_owner_only=True)
            delivered += self.fan_out(tenant, plan, frame)
            missing = plan.unreachable
        if missing:
            self.metrics.failed.labels("no_connection").inc(len(missing))
        self.acks.settle(ack_id, RETRY, delivered, len(missing))

    def lost(self, peer: str, items: list[PeerItem]) -> None:
        """Items a peer link could not carry: count them, and settle their acks."""
        for item in items:
            if isinstance(item, Deliver):
                self.metrics.failed.labels("peer_unavailable").inc(len(item.users))
                if item.ack:
                    self.acks.settle(item.ack, peer, 0, len(item.users))

    async def expire_acks(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            expired = self.acks.expire(time.perf_counter(), ACK_TIMEOUT_S)
            if expired:
                self.metrics.failed.labels("ack_timeout").inc(expired)

    def on_peer_item(self, peer: str, item: PeerItem) -> None:
        if isinstance(item, Deliver):
            if item.mode == TO_HOLDER:
                self.deliver_local(item.tenant, self._held(item.tenant, item.users), item.frame)
                return
            redirect = item.mode == TO_OWNER
            plan = self.router.plan(item.tenant, item.users, as_owner_only=True, redirect=redirect)

            def reply(done: PendingAck, ack: int = item.ack) -> None:
                if ack:
                    self.peers.send(peer, Ack(ack, done.delivered, done.undelivered))

            pending = PendingAck(None, None, time.perf_counter(), done=reply)
            self.execute(item.tenant, plan, item.frame, pending, TO_OWNER_FINAL)
        elif isinstance(item, Ack):
            self.acks.settle(item.ack, peer, item.delivered, item.unreachable)
        else:
            change = HolderChange(self.name, item.tenant, item.user, item.holding, item.replaces)
            self.router.holder(change, peer)

    def _held(self, tenant: str, users: list[Any]) -> list[Any]:
        return [u for u in users if self.router.connections(tenant, u)]
