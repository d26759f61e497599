"""Sidecar leases and the data epoch: the Redis half of presence that heals.

Two failures leave `online-users:{T}` wrong without anyone noticing:

- a sidecar dies without cleaning up (kill -9, node loss): its users stay "online";
- Redis loses its data (restart without persistence, failover to an empty node): users
  who stay connected are no longer online.

Each sidecar therefore keeps a *lease* (`{wsop:presence}:leases`, a sorted set of name →
expiry in Redis server time) that its heartbeat renews; any live sidecar releases the
presence of sidecars whose lease expired (claim + lock: one reaper per victim). And a
random *epoch* (`{wsop:presence}:epoch`) is created by whoever finds it missing: a
sidecar that sees another epoch than the one it asserted its connections under (or its
own lease gone) re-asserts all of them and joins the epoch's *ready* set, which the
others compare with the membership before they trust the online bitmap again.

The scripts are in `wsop.acl.scripts`; this module is their thin asyncio adapter plus
the pure decisions (parsing, who we still wait for), tested without Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wsop.acl import keys
from wsop.acl.scripts import BEAT_LUA, CLAIM_LUA, FINISH_LUA, READY_LUA

READY_TTL_MS = 24 * 3600 * 1000
"""A ready set outlives its epoch by a day at most (live sidecars renew it every beat)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Beat:
    """What one heartbeat learnt.

    `lease_lost`: our lease was not there (a reaper released us, or Redis lost its
    data) — everything we hold must be asserted again. `being_reaped`: a reaper holds
    our lock right now; re-asserting before it finishes would be undone by it.
    """

    epoch: str
    now_ms: int
    lease_lost: bool
    created: bool
    being_reaped: bool
    expired: tuple[str, ...] = ()


def parse_beat(reply: list[Any]) -> Beat:
    epoch, now, added, created, locked, expired = reply
    return Beat(
        epoch=_text(epoch),
        now_ms=int(now),
        lease_lost=bool(int(added)),
        created=bool(int(created)),
        being_reaped=bool(int(locked)),
        expired=tuple(sorted(_text(n) for n in expired)),
    )


def epoch_created_ms(epoch: str | None) -> int | None:
    """The Redis time (ms) an epoch was created at, from its "<ms>-<token>" form."""
    if not epoch:
        return None
    head, _, _ = epoch.partition("-")
    return int(head) if head.isdigit() else None


@dataclass(frozen=True)
class Readiness:
    """The leases and the ready set of one epoch, read at Redis time `now_ms`."""

    now_ms: int
    leases: dict[str, float] = field(default_factory=dict)
    ready: frozenset[str] = frozenset()


def parse_readiness(reply: list[Any]) -> Readiness:
    now, flat, ready = reply
    leases = {_text(flat[i]): float(flat[i + 1]) for i in range(0, len(flat), 2)}
    return Readiness(int(now), leases, frozenset(_text(n) for n in ready))


def waiting_for(members: Iterable[str], state: Readiness, epoch: str, lease_ms: int) -> set[str]:
    """The sidecars we still wait for before the online bitmap of `epoch` is complete.

    Expected: every member of the ring. Not waited for: members whose lease expired
    (dead: a reaper releases them), and members with no lease at all once the epoch is
    older than a lease (a live sidecar renews its lease every heartbeat, so one that has
    not done so in a whole lease under this epoch is dead too). Everyone else must be in
    the epoch's ready set.
    """
    created = epoch_created_ms(epoch)
    age = state.now_ms - created if created is not None else lease_ms + 1
    waiting = set()
    for name in set(members) - state.ready:
        expiry = state.leases.get(name)
        if expiry is None and age > lease_ms:
            continue
        if expiry is not None and expiry < state.now_ms:
            continue
        waiting.add(name)
    return waiting


class LeaseStore:
    """One sidecar's view of the leases, the epoch and the ready sets (asyncio client)."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name
        self.token = f"{name}/{uuid.uuid4().hex[:12]}"  # whose lock a reap lock is
        self._beat = client.register_script(BEAT_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._finish = client.register_script(FINISH_LUA)
        self._ready = client.register_script(READY_LUA)

    async def beat(self, lease_ms: int, asserted: str | None) -> Beat:
        """Renew our lease; create the epoch if it is missing; list expired leases."""
        reply = await self._beat(
            keys=[
                keys.presence_epoch_key(),
                keys.presence_leases_key(),
                keys.presence_ready_key(asserted or ""),
                keys.presence_reap_key(self.name),
            ],
            args=[self.name, lease_ms, uuid.uuid4().hex, asserted or "", READY_TTL_MS],
        )
        return parse_beat(reply)

    async def mark_ready(self, epoch: str) -> None:
        """Everything this sidecar holds is asserted under `epoch`."""
        key = keys.presence_ready_key(epoch)
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(key, self.name)
        pipe.pexpire(key, READY_TTL_MS)
        await pipe.execute()

    async def readiness(self, epoch: str) -> Readiness:
        reply = await self._ready(
            keys=[keys.presence_leases_key(), keys.presence_ready_key(epoch)], args=[]
        )
        return parse_readiness(reply)

    async def claim(self, victim: str, lock_ms: int) -> bool:
        """Take the right to release `victim` (its lease expired, nobody else reaps it)."""
        reply = await self._claim(
            keys=[keys.presence_leases_key(), keys.presence_reap_key(victim)],
            args=[victim, self.token, lock_ms],
        )
        return bool(int(reply))

    async def finish(self, victim: str, epoch: str | None) -> None:
        await self._finish(
            keys=[
                keys.presence_leases_key(),
                keys.presence_reap_key(victim),
                keys.presence_ready_key(epoch or ""),
            ],
            args=[victim, self.token],
        )

    async def being_reaped(self) -> bool:
        return bool(await self.client.exists(keys.presence_reap_key(self.name)))

    async def drop(self, epoch: str | None) -> None:
        """A clean shutdown: no lease to expire, nothing for a reaper to do."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(keys.presence_leases_key(), self.name)
        if epoch:
            pipe.srem(keys.presence_ready_key(epoch), self.name)
        await pipe.execute()
