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
