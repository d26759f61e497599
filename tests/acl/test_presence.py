"""Presence across sidecars: the online bit is the OR of per-sidecar bitmaps, so a crashed
sidecar's users can be released exactly, without touching anyone else's bit."""

from __future__ import annotations

import asyncio

import pytest
import redis

from wsop.acl import keys
from wsop.acl.live import LiveAcl
from wsop.acl.presence import reset_presence
from wsop.backend import connect_async


def run(coro):
    return asyncio.run(coro)


async def with_acl(url: str, fn):
    acl = LiveAcl(connect_async(url))
    try:
        return await fn(acl)
    finally:
        await acl.close()


def online(r: redis.Redis, tenant: str, users: range) -> list[int]:
    return [u for u in users if r.getbit(keys.online_key(tenant), u)]


def test_last_holder_clears_the_bit(redis_url: str, r: redis.Redis) -> None:
    async def scenario(acl: LiveAcl) -> None:
        await acl.presence("s0", "A", 5, +1)
        await acl.presence("s1", "A", 5, +1)
        await acl.presence("s0", "A", 5, -1)
        assert online(r, "A", range(10)) == [5]
        await acl.presence("s1", "A", 5, -1)
        assert online(r, "A", range(10)) == []

    run(with_acl(redis_url, scenario))


def test_release_clears_only_what_the_dead_sidecar_alone_held(
    redis_url: str, r: redis.Redis
) -> None:
    r.setbit(keys.online_key("A"), 4000, 1)  # marked online by hand, far past the bitmaps

    async def scenario(acl: LiveAcl) -> None:
        for user in (1, 2, 3):
            await acl.presence("s0", "A", user, +1)
        await acl.presence("s1", "A", 2, +1)
        await acl.presence("s0", "B", 9, +1)
        assert await acl.release("s0") == 2  # tenants A and B
        assert online(r, "A", range(5000)) == [2, 4000]
        assert online(r, "B", range(20)) == []
        assert not r.exists(keys.presence_key("A", "s0"), keys.presence_tenants_key("s0"))
        assert await acl.release("s0") == 0  # idempotent

    run(with_acl(redis_url, scenario))


def test_reset_presence_forgets_every_holder(redis_url: str, r: redis.Redis) -> None:
    async def scenario(acl: LiveAcl) -> None:
        await acl.presence("s0", "A", 1, +1)
        await acl.presence("s1", "A", 1, +1)

    run(with_acl(redis_url, scenario))
    reset_presence(r, "A")
    assert not r.exists(keys.presence_holders_key("A"), keys.presence_key("A", "s0"))


@pytest.mark.parametrize("length", [1, 7, 8, 1000])
def test_release_keeps_longer_online_strings_intact(
    redis_url: str, r: redis.Redis, length: int
) -> None:
    others = list(range(0, length * 8, 3))
    for user in others:
        r.setbit(keys.online_key("A"), user, 1)

    async def scenario(acl: LiveAcl) -> None:
        await acl.presence("s0", "A", 0, +1)
        await acl.release("s0")

    run(with_acl(redis_url, scenario))
    assert online(r, "A", range(length * 8)) == [u for u in others if u != 0]


def test_bursts_wait_for_a_connection_instead_of_failing(redis_url: str, r: redis.Redis) -> None:
    """2,000 concurrent presence updates: more than the pool holds, none may fail."""

    async def scenario(acl: LiveAcl) -> None:
        await asyncio.gather(*(acl.presence("s0", "A", u, +1) for u in range(2000)))

    run(with_acl(redis_url, scenario))
    assert r.bitcount(keys.online_key("A")) == 2000


def test_list_online_reads_in_chunks_and_stops_at_the_limit(redis_url: str, r: redis.Redis) -> None:
    from wsop.acl.presence import count_online, list_online
    from wsop.acl.store import TenantStore

    store = TenantStore(r)
    ids = [0, 7, 8, 100, 5000, 123_456]
    store.set_online("L", ids, True)
    seen: list[tuple[int, int]] = []
    everyone = list_online(store, "L", 0, lambda done, total: seen.append((done, total)), 64)
    assert (everyone.users, everyone.count, everyone.truncated) == (ids, 6, False)
    size = r.strlen(keys.online_key("L"))
    assert len(seen) == -(-size // 64) and seen[-1] == (size, size)
    seen.clear()
    first = list_online(store, "L", 3, lambda done, total: seen.append((done, total)), 64)
    assert (first.users, first.count, first.truncated) == ([0, 7, 8], 6, True)
    assert len(seen) == 1  # the first 64 bytes held three: nothing more was read
    assert count_online(r, "L") == 6
    empty = list_online(store, "none", 10)
    assert (empty.users, empty.count, empty.truncated) == ([], 0, False)


def test_presence_of_reports_bits_and_connection_counts(redis_url: str, r: redis.Redis) -> None:
    from wsop.acl.presence import UserPresence

    async def scenario(acl: LiveAcl) -> None:
        await acl.presence("s0", "P", 5, +1)
        await acl.count_connection("s0", "P", 5, +1)
        await acl.count_connection("s1", "P", 5, +1)  # a second tab, on another sidecar
        await acl.presence("s1", "P", 6, +1)  # online, but counted by no sidecar
        got = await acl.presence_of("P", [5, 6, 7, 1 << 40])
        assert got == [
            UserPresence(5, True, 2),
            UserPresence(6, True, None),
            UserPresence(7, False, 0),
            UserPresence(1 << 40, False, 0),  # out of range: no bit at all
        ]
        assert await acl.online_count("P") == 2

    run(with_acl(redis_url, scenario))
