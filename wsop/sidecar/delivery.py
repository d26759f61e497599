"""Delivery: the router's decisions (`wsop.sidecar.router`, pure) carried out.

Local writes (`wsop.sidecar.local_writes`), forwarding to owners and holders over the
peer links, retries of unknown recipients within the grace after a membership change,
and acks that wait until every sidecar a message went to has answered. A recipient counts as
delivered only when the sidecar holding its connection wrote the frame to it — here, or
confirmed by that holder's answer — so `delivered` is a real count, and whatever could
not be delivered is counted (`wsop_deliveries_failed_total{reason}`) and reported in
the ack's `undelivered`. The client side (sessions, parsing, the ACL) lives in `app.py`.

A message may be dispatched in several slices (a huge team is planned a slice at a
time, so the event loop is never held for long): `begin` opens its ack, `dispatch`
sends one slice, `end` lets the ack complete once every answer is in.

With a history (`wsop.sidecar.recovery`), what this sidecar delivers *as the owner* —
to its own connections, to holders, or to nobody (the user is offline) — is recorded
first, and each recipient's frame carries its offset. The in-memory history records at
once; Redis answers later, so the owner's part of a slice then waits for it (in order:
one record at a time) while what goes to other owners leaves at once.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from wsop.sidecar.acks import AckBook, PendingAck
from wsop.sidecar.history import Recorder
from wsop.sidecar.local_writes import LocalWrites
from wsop.sidecar.metrics import SidecarMetrics
from wsop.sidecar.outbox import Outbox
from wsop.sidecar.peer_codec import (
    TO_HOLDER,
    TO_OWNER,
    TO_OWNER_FINAL,
    Ack,
    Deliver,
    Holding,
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
MAX_USERS_PER_ITEM: Final = 4096
"""Users named in one forwarded item: keeps items (and the owner's planning of one) small."""
PLANNING: Final = "~planning"  # pseudo-peer an ack waits on while slices are dispatched
RECORDING: Final = "~history"  # pseudo-peer an ack waits on while Redis records
_RETRIES = itertools.count(1)


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
        peer_ssl: ssl.SSLContext | None = None,
        history: Recorder | None = None,
    ) -> None:
        self.name = name
        self.history = history
        self.router = router
        self.outbox = outbox
        self.metrics = metrics
        self.peers = PeerLinks(name, admin_token, self.lost, self.reregister, peer_ssl)
        self.acks = AckBook()
        self.deliver_local = LocalWrites(router, outbox, metrics).deliver
        self.membership_changed_at = time.monotonic()
        self._spawn = spawn
        self.on_history_item: Callable[[str, PeerItem], None] | None = None

    def membership_changed(self) -> None:
        """Start the grace in which unknown recipients are retried, not reported."""
        self.membership_changed_at = time.monotonic()

    # -- dispatching -------------------------------------------------------------------

    def execute(
        self, tenant: str, plan: DeliveryPlan, frame: str, pending: PendingAck, mode: str
    ) -> list[str]:
        """Deliver what is ours, forward the rest; `pending` completes when all answered.
        Returns the peers the message was forwarded to (for backpressure)."""
        history = self.history
        if (
            not plan.peers
            and not plan.holders
            and not (plan.unreachable and self.in_grace())
            and (history is None or history.sync)
        ):
            # the common local case: no bookkeeping at all
            offsets = None
            if history is not None:
                offsets = history.record_now(tenant, plan.local + plan.unreachable, frame)
                if plan.foreign:
                    history.foreign(tenant, plan.foreign)
            local = None if offsets is None else offsets[: len(plan.local)]
            reached, refused = self.deliver_local(tenant, plan.local, frame, local)
            pending.delivered += reached
            pending.undelivered += refused
            if plan.unreachable:
                self._unreachable(pending, len(plan.unreachable))
            pending.done(pending)
            return []
        ack_id = self.begin(pending)
        peers = self.dispatch(ack_id, pending, tenant, plan, frame, mode)
        self.end(ack_id)
        return peers

    def begin(self, pending: PendingAck) -> int:
        """Open the ack of a message about to be dispatched (in one slice or several)."""
        ack_id = self.acks.open(pending)
        pending.expect(PLANNING, 0)
        return ack_id

    def end(self, ack_id: int) -> None:
        """Every slice is dispatched: the ack completes once the answers are in."""
        self.acks.settle(ack_id, PLANNING, 0, 0)

    def dispatch(
        self,
        ack_id: int,
        pending: PendingAck,
        tenant: str,
        plan: DeliveryPlan,
        frame: str,
        mode: str,
        offsets: dict[Any, str] | None = None,
    ) -> list[str]:
        """One slice of a message. Everything awaited is booked before it is sent: a link
        that is already down answers (as lost) synchronously."""
        history = self.history
        sent_to: list[str] = []
        if history is not None and offsets is None:
            owned = plan.owned()
            if plan.foreign:
                history.foreign(tenant, plan.foreign)
            if not history.sync and owned:
                # Redis answers later: the owner's part waits (in order), the rest goes now
                pending.expect(RECORDING, 0)

                def recorded(recorded: list[str]) -> None:
                    try:
                        by_user = dict(zip(owned, recorded, strict=True))
                        self._dispatch_owned(ack_id, pending, tenant, plan, frame, by_user)
                    except Exception:  # a bug: the ack still says who was not reached
                        self.metrics.failed.labels("internal_error").inc(len(owned))
                        self.acks.settle(ack_id, RECORDING, 0, len(owned))
                        raise
                    self.acks.settle(ack_id, RECORDING, 0, 0)

                history.record_later(tenant, owned, frame, recorded)
                sent_to = sorted(plan.holders)
            elif owned:
                by_user = dict(zip(owned, history.record_now(tenant, owned, frame), strict=True))
                sent_to = self._dispatch_owned(ack_id, pending, tenant, plan, frame, by_user)
        else:
            sent_to = self._dispatch_owned(ack_id, pending, tenant, plan, frame, offsets)
        for owner, users in plan.peers.items():
            self.metrics.forwarded.inc(len(users))
            for chunk in _chunks(users):
                pending.expect(owner, len(chunk))
                self.peers.send(owner, Deliver(tenant, chunk, ack_id, mode, frame))
            sent_to.append(owner)
        return sent_to

    def _dispatch_owned(
        self,
        ack_id: int,
        pending: PendingAck,
        tenant: str,
        plan: DeliveryPlan,
        frame: str,
        offsets: dict[Any, str] | None,
    ) -> list[str]:
        """The users this sidecar delivers as their owner: its connections, the holders
        of the others, and the unreachable ones (retried within the grace)."""
        local = None if offsets is None else [offsets[u] for u in plan.local]
        reached, refused = self.deliver_local(tenant, plan.local, frame, local)
        pending.delivered += reached
        pending.undelivered += refused
        sent_to = self._to_holders(ack_id, pending, tenant, plan, frame, offsets)
        if plan.unreachable:
            if self.in_grace():
                retry = f"~retry{next(_RETRIES)}"
                pending.expect(retry, len(plan.unreachable))
                self._spawn(
                    self._retry(tenant, plan.unreachable, frame, ack_id, pending, retry, offsets)
                )
            else:
                self._unreachable(pending, len(plan.unreachable))
        return sent_to

    def _to_holders(
        self,
        ack_id: int,
        pending: PendingAck,
        tenant: str,
        plan: DeliveryPlan,
        frame: str,
        offsets: dict[Any, str] | None = None,
    ) -> list[str]:
        """Forward to the holders of users' connections elsewhere. Each user is accounted
        once — by the first holder that has it, unless it was reached here already —
        the other holders get a copy that needs no answer (another tab of the user)."""
        if not plan.holders:
            return []
        claimed = set(plan.local)
        for holder in sorted(plan.holders):
            users = plan.holders[holder]
            accounted = [u for u in users if u not in claimed]
            copies = [u for u in users if u in claimed]
            claimed.update(accounted)
            self.metrics.forwarded.inc(len(users))
            for chunk in _chunks(accounted):
                pending.expect(holder, len(chunk))
                offs = None if offsets is None else [offsets[u] for u in chunk]
                self.peers.send(holder, Deliver(tenant, chunk, ack_id, TO_HOLDER, frame, offs))
            for chunk in _chunks(copies):
                offs = None if offsets is None else [offsets[u] for u in chunk]
                self.peers.send(holder, Deliver(tenant, chunk, 0, TO_HOLDER, frame, offs))
        return sorted(plan.holders)

    def _unreachable(self, pending: PendingAck, count: int) -> None:
        self.metrics.failed.labels("no_connection").inc(count)
        pending.undelivered += count

    def in_grace(self) -> bool:
        return time.monotonic() - self.membership_changed_at < MEMBERSHIP_GRACE_S

    async def _retry(
        self,
        tenant: str,
        users: list[Any],
        frame: str,
        ack_id: int,
        pending: PendingAck,
        retry: str,
        offsets: dict[Any, str] | None = None,
    ) -> None:
        """Right after a membership change, holders re-register with their new owners a
        few hundred ms late: retry users we know no connection of instead of dropping.
        (Recorded already, when there is a history: the retry keeps their offsets.)"""
        missing = users
        deadline = time.monotonic() + RETRY_WINDOW_S
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(RETRY_INTERVAL_S)
            plan = self.router.plan(tenant, missing, as_owner_only=True)
            missing, plan.unreachable, plan.foreign = plan.unreachable, [], []
            if offsets is None:
                self.dispatch(ack_id, pending, tenant, plan, frame, TO_OWNER_FINAL)
            else:
                self._dispatch_owned(ack_id, pending, tenant, plan, frame, offsets)
        if missing:
            self.metrics.failed.labels("no_connection").inc(len(missing))
        self.acks.settle(ack_id, retry, 0, len(missing))

    # -- the peer side -----------------------------------------------------------------

    def lost(self, peer: str, items: list[PeerItem], maybe_sent: bool = False) -> None:
        """Items a peer link could not carry: count them, and settle their acks. With a
        shared history, messages that certainly never reached an owner go to the users'
        owner by the membership now (`_reroute`); `maybe_sent` ones may have been
        recorded by the owner already, so they are not."""
        history = self.history
        for item in items:
            if isinstance(item, Deliver):
                self.metrics.failed.labels("peer_unavailable").inc(len(item.users))
                self.metrics.peer_items_lost.labels("deliver").inc()
                if item.ack:
                    self.acks.settle(item.ack, peer, 0, len(item.users))
                shared = history is not None and history.shared
                if shared and item.mode != TO_HOLDER and not maybe_sent:
                    self._reroute(peer, item)
            elif isinstance(item, Ack):  # the peer reports its users after its timeout
                self.metrics.peer_items_lost.labels("ack").inc()
            elif isinstance(item, Holding):  # re-sent when the link comes back (`reregister`)
                self.metrics.peer_items_lost.labels("holding").inc()
            else:  # a log on its way to its new owner, or a replay: recoveries fail honestly
                self.metrics.peer_items_lost.labels("history").inc()

    def _reroute(self, peer: str, item: Deliver) -> None:
        """A message its owner never got (the owner died; its link gave up): the owner
        by our membership now records it and delivers it — to users who reconnected
        meanwhile, live after their replay, with its offset. Once: if the membership
        still names the lost peer, or this was a second try, it is only recorded (a
        later replay has it). Nobody is acked again: the sender's ack already counted
        these recipients undelivered."""
        assert self.history is not None
        if item.mode == TO_OWNER:
            plan = self.router.plan(item.tenant, item.users)
            if peer not in plan.peers:
                pending = PendingAck(None, None, time.perf_counter(), done=_ignore)
                self.execute(item.tenant, plan, item.frame, pending, TO_OWNER_FINAL)
                return
        self.history.record_later(item.tenant, item.users, item.frame, _ignore)

    def reregister(self, peer: str) -> None:
        """A link came back: tell `peer` again about every connection we hold of users it
        owns (a registration may have died with the old connection; owners keep a set,
        so a repeat is harmless)."""
        for tenant, user, _ in self.router.users():
            if self.router.owner(tenant, user) == peer:
                self.peers.send(peer, Holding(tenant, user, True))

    async def expire_acks(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            expired = self.acks.expire(time.perf_counter(), ACK_TIMEOUT_S)
            if expired:
                self.metrics.failed.labels("ack_timeout").inc(expired)
            await self.peers.expire_lingering()

    def on_peer_item(self, peer: str, item: PeerItem) -> list[str]:
        """Handle one item from `peer`; returns the peers it was forwarded on to."""
        if isinstance(item, Deliver):
            if item.mode == TO_HOLDER:
                reached, refused = self.deliver_local(
                    item.tenant, item.users, item.frame, item.offsets
                )
                if item.ack:
                    self.peers.send(peer, Ack(item.ack, reached, refused))
                return []
            redirect = item.mode == TO_OWNER
            plan = self.router.plan(item.tenant, item.users, as_owner_only=True, redirect=redirect)

            def reply(done: PendingAck, ack: int = item.ack) -> None:
                if ack:
                    self.peers.send(peer, Ack(ack, done.delivered, done.undelivered))

            pending = PendingAck(None, None, time.perf_counter(), done=reply)
            return self.execute(item.tenant, plan, item.frame, pending, TO_OWNER_FINAL)
        if isinstance(item, Ack):
            self.acks.settle(item.ack, peer, item.delivered, item.unreachable)
        elif isinstance(item, Holding):
            change = HolderChange(self.name, item.tenant, item.user, item.holding, item.replaces)
            self.router.holder(change, peer)
        elif self.on_history_item is not None:  # logs handed over, replays asked/answered
            self.on_history_item(peer, item)
        return []


def _ignore(_: object) -> None:
    pass


def _chunks(users: list[Any]) -> list[list[Any]]:
    if len(users) <= MAX_USERS_PER_ITEM:
        return [users] if users else []
    return [users[i : i + MAX_USERS_PER_ITEM] for i in range(0, len(users), MAX_USERS_PER_ITEM)]
