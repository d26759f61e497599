"""Presence healing without processes: the pure decisions, the lease scripts on a real
Redis, and `Presence` driven by hand (fake sessions, no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis
from prometheus_client import CollectorRegistry

from tests.conftest import run_wsop
from wsop.acl import keys
from wsop.acl.leases import (
    LeaseStore,
    Readiness,
    epoch_created_ms,
    parse_beat,
    parse_readiness,
    waiting_for,
)
from wsop.acl.live import LiveAcl
from wsop.auth import Identity
from wsop.backend import connect_async
from wsop.errors import UsageError
from wsop.names import IdMode
from wsop.sidecar import SidecarConfig
from wsop.sidecar.presence import Presence, PresenceTimings, ReapGate, check_timings

# -- pure ----------------------------------------------------------------------------------


def test_timings_are_validated_and_the_default_bound_is_within_15_s() -> None:
    assert PresenceTimings().reap_bound_s == 12.0
    check_timings(0.3, 0.7, 1)
    inf, nan = float("inf"), float("nan")  # (lease inf passed: "> 2 x heartbeat")
    for bad in [(0, 10, 5), (2, -1, 5), (2, 10, 0), (2, 4, 5), (2, 3.9, 5), (2, inf, 5),
                (nan, 10, 5), (2, 10, inf)]:  # fmt: skip
        with pytest.raises(UsageError):
            check_timings(*bad)
    with pytest.raises(UsageError, match="more than twice the heartbeat"):
        SidecarConfig("s0", heartbeat_s=5, lease_s=6)


def test_cli_refuses_a_lease_shorter_than_two_heartbeats() -> None:
    done = run_wsop("sidecar", "--name", "s0", "--heartbeat", "5", "--lease", "6")
    assert done.returncode == 2
    assert "more than twice the heartbeat" in done.stderr and "Traceback" not in done.stderr


def test_beat_and_readiness_replies_are_parsed() -> None:
    beat = parse_beat([b"1700000000000-ab", 1700000001000, 1, 0, 0, [b"s2", b"s1"]])
    assert beat.epoch == "1700000000000-ab" and beat.now_ms == 1700000001000
    assert beat.lease_lost and not beat.created and not beat.being_reaped
    assert beat.expired == ("s1", "s2")
    state = parse_readiness([5, [b"s0", b"7", b"s1", b"3"], [b"s0"]])
    assert state == Readiness(5, {"s0": 7.0, "s1": 3.0}, frozenset({"s0"}))
    assert epoch_created_ms("1700000000000-ab") == 1700000000000
    assert epoch_created_ms(None) is None and epoch_created_ms("junk") is None


def test_waiting_for_skips_the_dead_and_waits_for_the_live() -> None:
    epoch = "1000-x"
    state = Readiness(now_ms=3000, leases={"live": 9000, "dead": 2999}, ready=frozenset({"me"}))
    # a live lease not yet ready: wait; an expired one: dead; no lease in a young epoch: wait
    assert waiting_for(["me", "live", "dead", "new"], state, epoch, 10_000) == {"live", "new"}
    # no lease although the epoch is older than a lease: never heartbeated, dead
    assert waiting_for(["me", "new"], state, epoch, 1_000) == set()
    done = Readiness(3000, {"live": 9000}, frozenset({"me", "live"}))
    assert waiting_for(["me", "live"], done, epoch, 10_000) == set()


def test_reap_gate_opens_after_a_lease_of_uninterrupted_beats() -> None:
    gate = ReapGate(lease_ms=1000)
    assert not gate.open(0)
    for now in range(0, 1001, 200):
        gate.beat(now)
    assert gate.open(1000)
    gate.beat(1700)  # 700 ms since the last beat: more than half a lease, a gap
    assert not gate.open(1700) and gate.open(2700)
    gate.failed()
    assert not gate.open(10_000)


# -- the lease scripts on a real Redis -----------------------------------------------------


def run(coro_fn: Callable[[LiveAcl], Awaitable[None]], url: str) -> None:
    async def main() -> None:
        acl = LiveAcl(connect_async(url))
        try:
            await coro_fn(acl)
        finally:
            await acl.close()

    asyncio.run(main())


def test_leases_epoch_claim_and_finish(redis_url: str, r: redis.Redis) -> None:
    async def scenario(acl: LiveAcl) -> None:
        a, b = LeaseStore(acl.client, "a"), LeaseStore(acl.client, "b")
        first = await a.beat(lease_ms=200, asserted=None)
        assert first.created and first.lease_lost and first.expired == ()
        again = await a.beat(lease_ms=200, asserted=first.epoch)
        assert again.epoch == first.epoch and not again.created and not again.lease_lost
        assert r.sismember(keys.presence_ready_key(first.epoch), "a")  # renewed each beat
        await b.beat(lease_ms=10_000, asserted=None)
        assert not await b.claim("a", 1000)  # a's lease is still valid
        await asyncio.sleep(0.25)
        seen = await b.beat(lease_ms=10_000, asserted=first.epoch)
        assert seen.expired == ("a",)
        assert await b.claim("a", 1000)
        assert not await LeaseStore(acl.client, "c").claim("a", 1000)  # one reaper only
        assert await a.being_reaped()
        await b.finish("a", first.epoch)
        assert r.zscore(keys.presence_leases_key(), "a") is None
        assert not r.sismember(keys.presence_ready_key(first.epoch), "a")
        back = await a.beat(lease_ms=200, asserted=first.epoch)  # "a" was only frozen
        assert back.lease_lost and not back.being_reaped

    run(scenario, redis_url)


def test_a_missing_epoch_is_created_once(redis_url: str, r: redis.Redis) -> None:
    async def scenario(acl: LiveAcl) -> None:
        stores = [LeaseStore(acl.client, f"s{i}") for i in range(5)]
        beats = await asyncio.gather(*(s.beat(1000, None) for s in stores))
        assert len({b.epoch for b in beats}) == 1 and sum(b.created for b in beats) == 1
        r.delete(keys.presence_epoch_key())
        renewed = await stores[0].beat(1000, beats[0].epoch)
        assert renewed.created and renewed.epoch != beats[0].epoch

    run(scenario, redis_url)


def test_resolve_team_reads_the_epoch_in_the_same_pipeline(redis_url: str, r: redis.Redis) -> None:
    r.hset(keys.meta_key("A"), "ids", "int")
    r.setbit(keys.team_key("A", "eng"), 3, 1)

    async def scenario(acl: LiveAcl) -> None:
        await acl.presence("s0", "A", 3, +1)
        assert (await acl.resolve_team("A", ["eng"], 3)).epoch is None
        r.set(keys.presence_epoch_key(), "1-x")
        res = await acl.resolve_team("A", ["eng"], 3)
        assert (res.users, res.epoch) == ([3], "1-x")
        missing = await acl.resolve_team("B", ["eng"], 3)  # unknown tenant: epoch still read
        assert missing.epoch == "1-x" and missing.not_found is not None

    run(scenario, redis_url)


# -- Presence by hand ----------------------------------------------------------------------


@dataclass(eq=False)
class FakeSession:
    ident: Identity
    index: int


def session(tenant: str, user: int | str, index: int) -> FakeSession:
    return FakeSession(Identity(tenant=tenant, user=user), index)


def presence_for(
    acl: LiveAcl, name: str, held: list[FakeSession], members: list[str], **timings: float
) -> Presence:
    settings = {"heartbeat_s": 0.1, "lease_s": 0.3, "wait_s": 0.5} | timings
    return Presence(
        name,
        acl,
        PresenceTimings(**settings),
        lambda: members,
        lambda: held,
        CollectorRegistry(),
    )


def online(r: redis.Redis, tenant: str, n: int = 20) -> list[int]:
    return [u for u in range(n) if r.getbit(keys.online_key(tenant), u)]


def test_data_loss_is_reasserted_in_bulk_and_a_user_gone_meanwhile_is_not(
    redis_url: str, r: redis.Redis
) -> None:
    held = [session("A", 1, 1), session("A", 2, 2), session("A", 2, 2), session("B", 5, 5)]

    async def scenario(acl: LiveAcl) -> None:
        p = presence_for(acl, "s0", held, ["s0"])
        await p.sync()
        for s in held:
            await acl.presence("s0", s.ident.tenant, s.index, +1)
        r.flushall()  # Redis lost everything
        gone = held.pop(0)  # user 1 leaves while we re-assert: no +1 may outlive it
        await acl.presence("s0", "A", gone.index, -1)
        await p.sync()
        assert online(r, "A") == [2] and online(r, "B") == [5]
        assert {m.decode() for m in r.smembers(keys.presence_tenants_key("s0"))} == {"A", "B"}
        assert p.reasserted == 1 and p.asserted == r.get(keys.presence_epoch_key()).decode()

    run(scenario, redis_url)


def test_string_ids_are_mapped_again_through_the_new_directory(
    redis_url: str, r: redis.Redis
) -> None:
    held = [session("S", "alice", 0), session("S", "bob", 1)]
    r.hset(keys.meta_key("S"), "ids", "string")

    async def scenario(acl: LiveAcl) -> None:
        assert await acl.id_mode("S") is IdMode.STRING
        p = presence_for(acl, "s0", held, ["s0"])
        await p.sync()
        r.flushall()
        to_index, _, next_key = keys.directory_keys("S")
        r.hset(to_index, "bob", 0)  # the app re-seeded first: bob got index 0 this time
        r.hset(keys.directory_keys("S")[1], 0, "bob")
        r.set(next_key, 1)
        await p.sync()
        assert [s.index for s in held] == [1, 0]  # alice got the next free index
        assert online(r, "S") == [0, 1]

    run(scenario, redis_url)


def test_a_dead_sidecar_is_reaped_and_one_that_was_only_frozen_comes_back(
    redis_url: str, r: redis.Redis
) -> None:
    held_a = [session("A", 1, 1)]
    held_b = [session("A", 2, 2)]

    async def scenario(acl: LiveAcl) -> None:
        a = presence_for(acl, "a", held_a, ["a", "b"])
        b = presence_for(acl, "b", held_b, ["a", "b"])
        await a.sync()
        await b.sync()
        await acl.presence("a", "A", 1, +1)
        await acl.presence("b", "A", 2, +1)
        await b.start()  # b heartbeats every 0.1 s; a is frozen from now on
        for _ in range(60):  # b's gate opens after a lease of beats; a's lease ends
            await asyncio.sleep(0.05)
            if b.reaped:
                break
        assert online(r, "A") == [2] and b.reaped == 1
        await a.sync()  # a wakes up: its lease was gone, so it asserts everything again
        assert online(r, "A") == [1, 2] and a.reasserted == 1
        await b.stop()

    run(scenario, redis_url)


def test_a_team_message_waits_for_a_member_then_counts_incomplete(
    redis_url: str, r: redis.Redis
) -> None:
    r.hset(keys.meta_key("A"), "ids", "int")
    r.setbit(keys.team_key("A", "eng"), 1, 1)
    r.setbit(keys.team_key("A", "eng"), 2, 1)

    async def scenario(acl: LiveAcl) -> None:
        held = [session("A", 1, 1)]
        p = presence_for(acl, "s0", held, ["s0", "s1"], wait_s=0.4, lease_s=5)
        other = presence_for(acl, "s1", [session("A", 2, 2)], ["s0", "s1"], lease_s=5)
        await p.sync()
        await other.sync()
        await acl.presence("s0", "A", 1, +1)
        await acl.presence("s1", "A", 2, +1)
        assert await p.team_recipients("A", ["eng"], 1) == ([1, 2], None)
        assert p.metrics.incomplete._value.get() == 0
        r.flushall()
        r.hset(keys.meta_key("A"), "ids", "int")
        r.setbit(keys.team_key("A", "eng"), 1, 1)
        r.setbit(keys.team_key("A", "eng"), 2, 1)
        # s1 never re-asserts (no heartbeat): the message waits, then goes, counted
        started = asyncio.get_running_loop().time()
        assert await p.team_recipients("A", ["eng"], 1) == ([1], None)
        assert asyncio.get_running_loop().time() - started >= 0.4
        assert p.metrics.incomplete._value.get() == 1 and p.health()["waiting_for"] == ["s1"]
        await other.sync()  # s1 catches up; counted until a heartbeat sees it ready
        assert await p.team_recipients("A", ["eng"], 1) == ([1, 2], None)
        assert p.metrics.incomplete._value.get() == 2
        await p._check_ready(p.asserted)
        assert await p.team_recipients("A", ["eng"], 1) == ([1, 2], None)
        assert p.metrics.incomplete._value.get() == 2 and p.health()["complete"]

    run(scenario, redis_url)


def test_a_string_tenant_stays_one_when_its_meta_was_lost(redis_url: str, r: redis.Redis) -> None:
    r.hset(keys.meta_key("S"), "ids", "string")

    async def scenario(acl: LiveAcl) -> None:
        assert await acl.bit_index("S", "alice") == 0
        r.flushall()
        acl.forget_caches()
        assert await acl.id_mode("S") is IdMode.STRING
        assert await acl.bit_index("S", "bob") == 0  # through the new directory, not refused
        assert await acl.id_mode("never-seen") is IdMode.INT

    run(scenario, redis_url)
