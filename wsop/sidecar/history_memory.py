"""The in-memory history as a sidecar runs it: its logs move with their users' ownership.

`wsop.sidecar.history.MemoryHistory` is the structure (pure); this is its I/O around it:

- **recording** happens at once, on the event loop (`record_now`), as the owner delivers;
- **reading** for a reconnecting client: from our own logs when we own the user, else
  asked of the owner over the peer link (`ReplayAsk`): the owner answers from its log,
  and the live frames it forwards meanwhile arrive on the same ordered link first (the
  replay drops those it already contains, `wsop.sidecar.recovery`);
- **hand-overs**: when the membership changes, every log whose user has another owner
  now is sent to it (`LogEntry`… then `LogEnd`) and dropped here; the same when this
  sidecar stops (onto the ring without it), and a second later for logs written here
  for users another sidecar owns (peers routed to us while we disagreed about the
  membership). The receiver installs a handed log, or merges it with one it started
  meanwhile (`MemoryHistory.give`). A log lost on the way (the link broke, the sidecar
  was killed) makes its offsets fail honestly (`unknown_offset`), never lie.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import Final

from wsop import protocol
from wsop.sidecar.history import HistoryLimits, Key, LogState, MemoryHistory, Replay
from wsop.sidecar.peer_codec import LogEnd, LogEntry, PeerItem, ReplayAnswer, ReplayAsk
from wsop.sidecar.peers import PeerLinks

log = logging.getLogger("wsop.sidecar.history")

ASK_TIMEOUT_S: Final = 3.0
SLICE: Final = 4096
"""Logs handed over between two yields to the event loop."""


class MemoryStore:
    """The in-memory backend: `wsop.sidecar.delivery.Recorder` and the replay's source."""

    sync = True
    shared = False

    def __init__(
        self,
        name: str,
        limits: HistoryLimits,
        owner: Callable[[str, Hashable], str],
        peers: PeerLinks,
    ) -> None:
        self.name = name
        self.history = MemoryHistory(limits)
        self.owner = owner
        self.peers = peers
        self.handovers: Counter[str] = Counter()
        self._strays: set[Key] = set()
        self._incoming: dict[tuple[str, Key], list[tuple[int, float, str]]] = {}
        self._asks: dict[int, asyncio.Future[ReplayAnswer]] = {}
        self._ids = itertools.count(1)

    # -- Recorder ------------------------------------------------------------------------

    def record_now(self, tenant: str, users: Sequence[Hashable], frame: str) -> list[str]:
        return self.history.record(tenant, users, frame, time.monotonic())

    def record_later(self, tenant, users, frame, then) -> None:  # pragma: no cover
        raise TypeError("the in-memory history records at once")

    def foreign(self, tenant: str, users: Sequence[Hashable]) -> None:
        self._strays.update((tenant, user) for user in users)

    def data_lost(self, before_s: float) -> None:
        """Presence was lost `before_s` ago at the latest: offsets older cannot vouch."""
        self.history.lost_before = time.monotonic() - before_s

    def sweep(self) -> None:
        """Once a second: the age bound, and stray logs to their owners."""
        self.history.sweep(time.monotonic())
        strays, self._strays = self._strays, set()
        for key in strays:
            owner = self.owner(*key)
            if owner != self.name:
                self._send_log(owner, key)

    # -- replay --------------------------------------------------------------------------

    async def read(self, tenant: str, user: Hashable, since: str) -> Replay:
        owner = self.owner(tenant, user)
        if owner == self.name:
            return self.history.read(tenant, user, since, time.monotonic())
        request = next(self._ids)
        future: asyncio.Future[ReplayAnswer] = asyncio.get_running_loop().create_future()
        self._asks[request] = future
        try:
            self.peers.send(owner, ReplayAsk(request, tenant, user, since))
            answer = await asyncio.wait_for(future, ASK_TIMEOUT_S)
        except TimeoutError:
            return Replay(False, protocol.HISTORY_UNAVAILABLE)
        finally:
            self._asks.pop(request, None)
        ok = answer.reason is None
        return Replay(ok, answer.reason, answer.entries, answer.epoch, answer.upto)

    # -- hand-overs ----------------------------------------------------------------------

    async def hand_over(self, owner: Callable[[Key], str]) -> int:
        """Send every log whose user `owner` (a placement) gives to another sidecar."""
        sent = 0
        for i, key in enumerate(self.history.keys()):
            target = owner(key)
            if target != self.name and key in self.history.logs:
                self._send_log(target, key)
                sent += 1
            if i % SLICE == SLICE - 1:
                await asyncio.sleep(0)
        if sent:
            log.info("handed %d user log(s) to their new owners", sent)
        return sent

    def _send_log(self, target: str, key: Key) -> None:
        state = self.history.take(key, time.monotonic())
        if state is None:
            return
        tenant, user = key
        for seq, age, frame in state.entries:
            entry = LogEntry(tenant, user, state.epoch, seq, int(age * 1000), frame)
            self.peers.send(target, entry)
        gone_age = int(state.gone_age * 1000)
        self.peers.send(
            target, LogEnd(tenant, user, state.epoch, state.next_seq, state.gone_seq, gone_age)
        )
        self.handovers["sent"] += 1

    def on_item(self, peer: str, item: PeerItem) -> None:
        """A log handed to us, a replay asked of us, or the answer to one we asked."""
        if isinstance(item, LogEntry):
            entries = self._incoming.setdefault((peer, (item.tenant, item.user)), [])
            entries.append((item.seq, item.age_ms / 1000, item.frame))
            if len(entries) > self.history.limits.max_messages:
                del entries[0]
        elif isinstance(item, LogEnd):
            key = (item.tenant, item.user)
            state = LogState(
                item.epoch, item.next_seq, self._incoming.pop((peer, key), []),
                item.gone_seq, item.gone_age_ms / 1000,
            )  # fmt: skip
            self.handovers[self.history.give(key, state, time.monotonic())] += 1
        elif isinstance(item, ReplayAsk):
            replay = self.history.read(item.tenant, item.user, item.since, time.monotonic())
            answer = ReplayAnswer(item.request, replay.reason, replay.epoch, replay.upto, [])
            if replay.ok:
                answer = ReplayAnswer(item.request, None, replay.epoch, replay.upto, replay.entries)
            self.peers.send(peer, answer)
        elif isinstance(item, ReplayAnswer):
            future = self._asks.get(item.request)
            if future is not None and not future.done():
                future.set_result(item)
