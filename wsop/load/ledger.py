"""Loss accounting for one load generator process. Pure: no sockets, no clock.

Each message is a key `(sender slot << 32) | seq`. The sender books the *slots* it
expects to reach (`sent`), every receiver records what arrived (`received`), the
sender records the ack or the error frame that answered it (`acked`, `refused`), and
every user records when its connection dropped and when it was ready again (`dropped`,
`back`). A message is *settled* once older than the grace period; each of its expected
deliveries then lands in exactly one class (`classify`):

- `delivered`: it arrived;
- `lost_disconnected`: the recipient's connection dropped between send - 1 s and
  settling (the stack could not reach it; the client reconnects and would catch up);
- `lost_unacked`: the sender's connection dropped before any ack came back, so nobody
  could have told it;
- `reported_undelivered`: the ack's `undelivered` covers it. The count is attributed to
  the disconnected recipients first (they are excused anyway), so only what is left
  of it excuses a connected one: the pessimistic reading;
- `silent_loss`: none of the above. The stack accepted the message, the recipient was
  connected, and nobody said anything: the one class that must be 0.

`lost` is the sum of the four loss classes, so `expected == delivered + lost` holds
message by message. A message answered by an error frame was refused, not accepted:
its expectations are cancelled and it is counted under `refused` (and its code).
Counted apart, never mixed in: `duplicates` (a receiver got a message twice: a roaring
bitmap per receiver), `surplus` (a delivery to a slot that was not expected),
`cross_tenant` (sender and receiver in different tenants: must be 0), `late` (arrived
after settling), `silent_late` (of those, deliveries first classed silent: the stack
was slower than the grace period, not lossy), `unexpected` (never sent here).

Every count is also kept per *window* (`wsop.load.chaos`): the window of the message's
send time, or of the drop for reconnects.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any

from wsop.load.arrivals import ROW_MAX as _ROW_MAX
from wsop.load.arrivals import SEQ_BITS, SEQ_MASK, Arrivals
from wsop.load.hot import settle_span as _settle_span
from wsop.load.replay import Replayable
from wsop.load.tallies import LOSS_CLASSES, Counters, classify, new_window

AROUND_SEND_S = 1.0  # a drop this long before a send still explains its loss
RECONNECT_SAMPLES = 5000  # per window and process: enough for a p99, bounded memory
SILENT_EXAMPLES = 5  # per process: enough to start a server-side investigation
SILENT_TRACKED = 100_000  # silent messages remembered to notice them arriving late
_OPEN = math.inf


def message_key(slot: int, seq: int) -> int:
    return (slot << SEQ_BITS) | seq


# entry fields: expected slots, arrived bit mask, ack (-1: none yet), window, sent at,
# team (0/1), refused (0/1)
_SLOTS, _MASK, _ACK, _WIN, _AT, _TEAM, _REFUSED = range(7)


class Ledger:
    def __init__(
        self, grace_s: float, tenants_per_worker: int = 1, edges: tuple = (), worker: int = 0
    ) -> None:
        self.grace_s = grace_s
        self.tenants = max(1, tenants_per_worker)
        self.worker = worker
        self.silent_examples: list[dict[str, Any]] = []
        self.edges = sorted(edges)
        self.run_started_at: float | None = None  # wall time the windows count from
        self.counters = Counters()
        self.windows = [new_window() for _ in range(len(self.edges) + 1)]
        self.refused_codes: dict[str, int] = {}
        self.connect_errors: dict[str, int] = {}  # stable reason -> attempts
        self.recovery_reasons: dict[str, int] = {}  # `recovered` ok:false reason -> count
        self._replayable = Replayable()  # settled losses a replay may still deliver
        self._pending: dict[int, list[Any]] = {}
        # (sent at, key), oldest first; the settled ones are below _head (dropped in bulk)
        self._order: list[tuple[float, int]] = []
        self._head = 0
        self._arrivals = Arrivals()  # who got what, once the entries are settled
        self._settled_upto: dict[int, int] = {}  # sender slot -> highest settled seq
        self._drops: dict[int, list[list[float]]] = {}  # slot -> [[dropped, back], …]
        # key -> [window, slots, count] of settled messages with silent losses: a late
        # arrival among `slots` (at most `count` of them) was slow, not lost
        self._silent: dict[int, list[Any]] = {}

    def window_of(self, ts: float) -> int:
        if self.run_started_at is None or not self.edges:
            return 0
        return bisect_right(self.edges, ts - self.run_started_at)

    # -- the sender's side -------------------------------------------------------------

    def sent(self, key: int, recipients: tuple[int, ...], now: float, team: bool = False) -> None:
        """Book a message before it leaves: `recipients` are the slots expected to get it."""
        c = self.counters
        c.sent += 1
        if team:
            c.team += 1
        else:
            c.direct += 1
        if not c.first_send:
            c.first_send = now
        c.last_send = now
        window = 0
        if self.edges and self.run_started_at is not None:
            window = bisect_right(self.edges, now - self.run_started_at)
        self.windows[window]["sent"] += 1
        self._pending[key] = [recipients, 0, -1, window, now, team, 0]
        self._order.append((now, key))

    def booked_direct(self, n: int, first: float, last: float) -> None:
        """The counters of `n` direct messages the compiled send loop booked itself
        (`wsop/load/_hot.c`: their entries as `sent` makes them, in window 0: it books
        only when there are no windows), sent between `first` and `last`."""
        c = self.counters
        c.sent += n
        c.direct += n
        c.first_send = min(c.first_send, first) if c.first_send else first
        c.last_send = max(c.last_send, last)
        self.windows[0]["sent"] += n

    def cancel(self, key: int) -> None:
        """The send failed before the message left: it was never sent, nothing is expected."""
        entry = self._pending.pop(key, None)
        if entry is not None:
            self.counters.sent -= 1
            self.counters.send_failed += 1
            self.windows[entry[_WIN]]["sent"] -= 1
            if entry[_TEAM]:
                self.counters.team -= 1
            else:
                self.counters.direct -= 1

    def acked(self, key: int, delivered: int, undelivered: int) -> None:
        c = self.counters
        c.acks += 1
        c.ack_undelivered += undelivered
        entry = self._pending.get(key)
        if entry is None:
            return  # settled already (a very late ack): its deliveries are classified
        entry[_ACK] = undelivered
        if entry[_TEAM] and delivered + undelivered != len(entry[_SLOTS]):
            c.ack_mismatch += 1

    def acks_counted(self, n: int, undelivered: int, mismatched: int) -> None:
        """The counters of `n` acks the compiled read loop applied to their entries
        itself, as `acked` does (`wsop/load/_hot.c`)."""
        c = self.counters
        c.acks += n
        c.ack_undelivered += undelivered
        c.ack_mismatch += mismatched

    def refused(self, key: int, code: str) -> None:
        """An error frame answered the message: refused, not accepted; nothing expected."""
        entry = self._pending.get(key)
        if entry is None or entry[_REFUSED]:
            return
        entry[_REFUSED] = 1
        self.counters.refused += 1
        self.windows[entry[_WIN]]["refused"] += 1
        self.refused_codes[code] = self.refused_codes.get(code, 0) + 1

    def connect_failed(self, reason: str) -> None:
        """A connection attempt failed (`wsop.load.failures.stable_reason` names why)."""
        self.counters.connect_failures += 1
        self.connect_errors[reason] = self.connect_errors.get(reason, 0) + 1

    # -- the receiver's side -----------------------------------------------------------

    def received(
        self, receiver: int, key: int, sent_ts: float | None = None, replay: bool = False
    ) -> bool:
        """Record an arrival; True only for an expected delivery seen for the first time.
        `replay`: it came before the `recovered` frame of a `?since=` reconnect.

        The common case (an expected recipient of a pending message, first arrival)
        touches only the message's entry: its arrival bits tell a duplicate. What the
        entry cannot tell (after settling, refused, unexpected recipients) goes through
        the per-receiver bitmaps (`_received_rare`), which settling fills in bulk."""
        entry = self._pending.get(key)
        if entry is not None and not entry[_REFUSED]:
            slots = entry[_SLOTS]
            if receiver in slots and (key >> SEQ_BITS) % self.tenants == receiver % self.tenants:
                bit = 1 << slots.index(receiver)
                mask = entry[_MASK]
                if mask & bit:
                    self._duplicate(receiver, key, sent_ts, replay)
                    return False
                entry[_MASK] = mask | bit
                if replay:
                    self._count("recovered_messages", sent_ts)
                    self._replayable.arrived(receiver, key)
                return True
        return self._received_rare(receiver, key, entry, sent_ts, replay)

    def _received_rare(
        self, receiver: int, key: int, entry: Any, sent_ts: float | None, replay: bool = False
    ) -> bool:
        if self._arrivals.seen(receiver, key) or (
            entry is not None
            and receiver in entry[_SLOTS]
            and entry[_MASK] >> entry[_SLOTS].index(receiver) & 1
        ):
            self._duplicate(receiver, key, sent_ts, replay)
            return False
        self._arrivals.add(receiver, key)
        sender = key >> SEQ_BITS
        if sender % self.tenants != receiver % self.tenants:
            self._count("cross_tenant", sent_ts)
            return False
        if entry is None:
            seq = key & SEQ_MASK
            if seq <= self._settled_upto.get(sender, -1):
                if not (replay and self._replayable.deliver(key, receiver, self)):
                    self._late(receiver, key, sent_ts)
            else:
                self.counters.unexpected += 1
            return False
        self.counters.surplus += 1  # refused, or not a recipient (else: the common case)
        return False

    def _duplicate(self, receiver: int, key: int, sent_ts: float | None, replay: bool) -> None:
        self._count("duplicates", sent_ts)
        kind = self._replayable.duplicate(receiver, key, replay)
        if kind:
            self._count(kind, sent_ts)

    def _late(self, receiver: int, key: int, sent_ts: float | None) -> None:
        """After settling: already counted lost; if it was a silent loss, it was slow."""
        self._count("late", sent_ts)
        silent = self._silent.get(key)
        if silent is not None and silent[2] > 0 and receiver in silent[1]:
            silent[2] -= 1
            self.counters.silent_late += 1
            self.windows[silent[0]]["silent_late"] += 1

    def recovered(self, slot: int, ok: bool, reason: str, now: float) -> None:
        """The `recovered` frame ending a `?since=` replay, in the window of the drop."""
        drops = self._drops.get(slot)
        window = self.windows[self.window_of(drops[-1][0] if drops else now)]
        name = "recovery_ok" if ok else "recovery_failed"
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        window[name] += 1
        if not ok:
            self.recovery_reasons[reason] = self.recovery_reasons.get(reason, 0) + 1

    def foreign(self, sent_ts: float | None = None) -> None:
        """A message from another worker arrived: its tenants are never ours."""
        self._count("cross_tenant", sent_ts)

    def _count(self, name: str, sent_ts: float | None) -> None:
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        window = self.window_of(sent_ts) if sent_ts is not None else 0
        self.windows[window][name] += 1

    # -- connections -------------------------------------------------------------------

    def dropped(self, slot: int, now: float) -> None:
        """The slot's connection dropped: it is away until `back`."""
        self.counters.disconnects += 1
        drops = self._drops.setdefault(slot, [])
        if not drops or drops[-1][1] != _OPEN:
            drops.append([now, _OPEN])

    def back(self, slot: int, now: float) -> float | None:
        """The slot is ready again (reconnected, hello answered); the outage in ms."""
        drops = self._drops.get(slot)
        if not drops or drops[-1][1] != _OPEN:
            return None
        drops[-1][1] = now
        ms = (now - drops[-1][0]) * 1000
        self.counters.reconnects += 1
        window = self.windows[self.window_of(drops[-1][0])]
        window["reconnects"] += 1
        if len(window["reconnect_ms"]) < RECONNECT_SAMPLES:
            window["reconnect_ms"].append(round(ms, 1))
        return ms

    def was_away(self, slot: int, start: float, end: float) -> bool:
        """Did the slot's connection drop at some point in [start, end]?"""
        return any(d <= end and b >= start for d, b in self._drops.get(slot, ()))

    # -- settling ----------------------------------------------------------------------

    def settle(self, now: float, everything: bool = False) -> None:
        """Close the books on messages older than the grace period (or on all of them)."""
        c, windows, order = self.counters, self.windows, self._order
        head = end = self._head
        if everything:
            end = len(order)
        else:
            cutoff, last = now - self.grace_s, len(order)
            while end < last and order[end][0] <= cutoff:  # send order: stop at the first not due
                end += 1
        missing = done = 0
        done_in = [0] * len(windows)  # fully delivered, by window: added up once, below
        if _settle_span is not None:  # the loop below, compiled (`wsop.load.hot`)
            at = head
            while at < end:
                m, d, span_in, at = _settle_span(self, order, at, end, now, len(windows))
                missing, done = missing + m, done + d
                done_in = [a + b for a, b in zip(done_in, span_in, strict=True)]
                if at < end:  # a wide team message: here
                    m, d = self._settle_entry(order[at][1], now, done_in)
                    missing, done, at = missing + m, done + d, at + 1
        else:
            for _, key in order[head:end]:
                m, d = self._settle_entry(key, now, done_in)
                missing, done = missing + m, done + d
        if end == len(order) or (end > 4096 and end * 2 > len(order)):
            del order[:end]  # the settled part, in bulk
            end = 0
        self._head = end
        c.acks_missing += missing
        c.expected += done
        c.delivered += done
        for window, n in zip(windows, done_in, strict=True):
            if n:
                window["expected"] += n
                window["delivered"] += n
        self._prune(now)

    def _settle_entry(self, key: int, now: float, done_in: list[int]) -> tuple[int, int]:
        """Settle `key` (pending or cancelled): (acks missing, deliveries done) of it;
        its done ones are added to `done_in` by window."""
        entry = self._pending.pop(key, None)
        if entry is None:
            return 0, 0  # cancelled
        sender, seq = key >> SEQ_BITS, key & SEQ_MASK
        upto, arrivals = self._settled_upto, self._arrivals
        if seq > upto.get(sender, -1):
            upto[sender] = seq
        slots, mask = entry[_SLOTS], entry[_MASK]
        if mask == 1 and len(slots) == 1:  # a direct message that arrived: remembered
            row = arrivals.rows.get(sender)  # by its sender's seq (`Arrivals.add_direct`)
            if row is not None and len(row) == seq and 0 <= slots[0] < _ROW_MAX:
                row.append(slots[0])
            else:
                arrivals.add_direct(slots[0], key)
        elif mask:  # the arrivals the entry recorded outlive it
            for i, slot in enumerate(slots):
                if mask >> i & 1:
                    arrivals.add(slot, key)
        if entry[_REFUSED]:
            return 0, 0
        n = len(slots)
        if mask == (1 << n) - 1:  # the common case: every delivery arrived
            done_in[entry[_WIN]] += n
        else:
            self._settle_one(key, entry, now)
            n = 0
        return (1 if entry[_ACK] < 0 else 0), n

    def _settle_one(self, key: int, entry: list[Any], now: float) -> None:
        slots, mask, ack, window, at = entry[:5]
        sender = key >> SEQ_BITS
        since = at - AROUND_SEND_S
        arrived = mask.bit_count()
        away = 0
        if arrived < len(slots):
            away = sum(
                1
                for i, slot in enumerate(slots)
                if not mask >> i & 1 and self.was_away(slot, since, now)
            )
        classes = classify(
            len(slots),
            arrived,
            away,
            None if ack < 0 else ack,
            arrived + away < len(slots) and ack < 0 and self.was_away(sender, since, now),
        )
        lost = len(slots) - arrived
        c, w = self.counters, self.windows[window]
        c.expected += len(slots)
        c.delivered += arrived
        c.lost += lost
        w["expected"] += len(slots)
        w["delivered"] += arrived
        w["lost"] += lost
        for name in LOSS_CLASSES:
            n = getattr(classes, name)
            if n:
                setattr(c, name, getattr(c, name) + n)
                w[name] += n
        lost_slots = [s for i, s in enumerate(slots) if not mask >> i & 1]
        away_slots = [s for s in lost_slots if self.was_away(s, since, now)] if away else []
        missing = [s for s in lost_slots if s not in away_slots]
        self._replayable.remember(key, window, away_slots, missing, classes.reported_undelivered)
        if not classes.silent_loss:
            return
        self._silent[key] = [window, missing, classes.silent_loss]
        if len(self._silent) > SILENT_TRACKED:
            del self._silent[next(iter(self._silent))]  # the oldest
        if len(self.silent_examples) < SILENT_EXAMPLES:
            self.silent_examples.append(
                {
                    "tenant": self.tenant_of(sender),
                    "from": sender // self.tenants,
                    "to": [s // self.tenants for s in missing],
                    "team": bool(entry[_TEAM]),
                    "ack_undelivered": None if ack < 0 else ack,
                    "sent_s": round(at - (self.run_started_at or at), 3),
                }
            )

    def tenant_of(self, slot: int) -> str:
        """The tenant name of this process's `slot` (see `wsop.load.layout`)."""
        return f"t{self.worker * self.tenants + slot % self.tenants}"

    def _prune(self, now: float) -> None:
        """Forget drops that ended before anything still pending was sent."""
        oldest = self._order[self._head][0] if self._head < len(self._order) else now
        floor = oldest - AROUND_SEND_S
        for slot in [s for s, d in self._drops.items() if d and d[0][1] < floor]:
            kept = [d for d in self._drops[slot] if d[1] >= floor]
            if kept:
                self._drops[slot] = kept
            else:
                del self._drops[slot]

    def snapshot(self) -> dict[str, Any]:
        c = self.counters
        c.pending = len(self._pending)
        c.not_back = sum(1 for d in self._drops.values() if d and d[-1][1] == _OPEN)
        return {
            **c.to_json(),
            "refused_codes": dict(self.refused_codes),
            "connect_errors": dict(self.connect_errors),
            "recovery_reasons": dict(self.recovery_reasons),
            "silent_examples": list(self.silent_examples),
            "windows": [dict(w, reconnect_ms=list(w["reconnect_ms"])) for w in self.windows],
        }
