"""The lean resolution connection (`wsop.acl.resp`) against real redis-servers: the same
replies as redis-py's pipeline, AUTH and SELECT from the URL, a restart survived, and
redis-py kept wherever the lean path does not apply."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsop.acl import bitmap
from wsop.acl.pipeline import parse_resolve, queue_resolve
from wsop.acl.resp import LeanPipe, LeanRedis, _Link, pack
from wsop.backend import connect_async
from wsop.local.redis_binary import free_port, start_server


def test_pack_is_resp_as_redis_py_encodes_it() -> None:
    assert pack(("SET", "k", b"v\r\n", 7, 1.5)) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n7\r\n$3\r\n1.5\r\n"
    )
    with pytest.raises(redis.DataError):
        pack(("SET", "k", None))


def _resolve(client: Any, lean: LeanRedis | None, teams: list[str], sender: int) -> Any:
    async def run() -> Any:
        if lean is None:
            pipe = client.pipeline(transaction=False)
            queue_resolve(pipe, "t", teams, True, sender=sender)
            return await pipe.execute(raise_on_error=False)
        pipe = LeanPipe()
        queue_resolve(pipe, "t", teams, True, sender=sender)
        return await lean.execute(pipe)

    return run()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(st.sampled_from("abc"), st.sets(st.integers(0, 300), max_size=40)),
    st.sets(st.integers(0, 300), max_size=120),
    st.integers(0, 300),
)
def test_a_lean_resolution_equals_redis_py_and_the_set_computation(
    redis_url: str, teams: dict[str, set[int]], online: set[int], sender: int
) -> None:
    async def scenario() -> tuple[Any, Any]:
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.flushall()
        await client.hset("meta:{t}", mapping={"ids": "int"})
        for team, members in teams.items():
            for user in members:
                await client.setbit(f"teams:{{t}}:{team}", user, 1)
        for user in online:
            await client.setbit("online-users:{t}", user, 1)
        lean = LeanRedis.for_client(client)
        assert lean is not None
        asked = sorted(teams) or ["a"]
        got = await _resolve(client, lean, asked, sender)
        want = await _resolve(client, None, asked, sender)
        lean.close()
        await client.aclose()
        return got, want

    got, want = asyncio.run(scenario())
    assert [bool(x) for x in got[:-3]] == [bool(x) for x in want[:-3]]  # (PEXPIRE: 1 / True)
    assert got[-2:] == want[-2:]
    asked = sorted(teams) or ["a"]
    raw = parse_resolve("t", asked, got, sender=sender)
    if raw.forbidden_team is None:
        expected = set().union(*(teams.get(t, set()) for t in asked)) & online
        assert set(bitmap.decode_list(raw.bits)) == expected


def test_error_replies_are_redis_py_exceptions_in_place(redis_url: str) -> None:
    async def scenario() -> list[Any]:
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.set("s", "text")
        lean = LeanRedis.for_client(client)
        assert lean is not None
        pipe = LeanPipe()
        pipe.get("s")
        pipe.hget("s", "field")  # WRONGTYPE
        pipe.execute_command("NOSUCHCOMMAND")
        pipe.get("s")
        replies = await lean.execute(pipe)
        lean.close()
        await client.aclose()
        return replies

    first, wrongtype, unknown, last = asyncio.run(scenario())
    assert first == last == b"text"
    assert isinstance(wrongtype, redis.ResponseError) and "WRONGTYPE" in str(wrongtype)
    assert isinstance(unknown, redis.ResponseError)


def test_auth_and_db_come_from_the_url_and_a_wrong_password_is_a_connection_error(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = start_server(port, tmp_path)
    redis.Redis(port=port).config_set("requirepass", "s3cret")
    try:

        async def scenario(password: str) -> Any:
            client = redis.asyncio.Redis.from_url(f"redis://:{password}@127.0.0.1:{port}/3")
            lean = LeanRedis.for_client(client)
            assert lean is not None
            try:
                if password == "s3cret":
                    await client.set("where", "db3")
                pipe = LeanPipe()
                pipe.get("where")
                return await lean.execute(pipe)
            finally:
                lean.close()
                await client.aclose()

        assert asyncio.run(scenario("s3cret")) == [b"db3"]
        with pytest.raises(redis.ConnectionError):
            asyncio.run(scenario("wrong"))
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_redis_restart_between_batches_is_survived_and_a_dead_one_is_reported(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = start_server(port, tmp_path / "a")

    async def scenario() -> tuple[Any, Any, Any]:
        nonlocal proc
        client = connect_async(f"redis://127.0.0.1:{port}/0")
        lean = LeanRedis.for_client(client)
        assert lean is not None
        pipe = LeanPipe()
        pipe.execute_command("SET", "k", "1")
        pipe.get("k")
        before = await lean.execute(pipe)
        proc.kill()
        proc.wait(timeout=10)
        proc = start_server(port, tmp_path / "b")  # the same address, empty
        pipe = LeanPipe()
        pipe.get("k")
        pipe.execute_command("SET", "k", "2")
        after = await lean.execute(pipe)  # the old connection is dead: dialled again
        proc.kill()
        proc.wait(timeout=10)
        try:
            await lean.execute(pipe)
            gone: Any = None
        except redis.ConnectionError as exc:
            gone = exc
        lean.close()
        await client.aclose()
        return before, after, gone

    try:
        before, after, gone = asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert before == [b"OK", b"1"]
    assert after == [None, b"OK"]
    assert isinstance(gone, redis.ConnectionError)


def test_many_batches_in_flight_get_their_own_replies_in_order(redis_url: str) -> None:
    async def scenario() -> list[bool]:
        client = redis.asyncio.Redis.from_url(redis_url)
        lean = LeanRedis.for_client(client)
        assert lean is not None

        async def one(n: int) -> bool:
            await asyncio.sleep(random.random() / 100)
            pipe = LeanPipe()
            for i in range(n % 5 + 1):
                pipe.execute_command("ECHO", f"{n}-{i}")
            replies = await lean.execute(pipe)
            return replies == [f"{n}-{i}".encode() for i in range(n % 5 + 1)]

        results = await asyncio.gather(*(one(n) for n in range(300)))
        lean.close()
        await client.aclose()
        return results

    assert all(asyncio.run(scenario()))


def test_a_cluster_or_tls_client_keeps_redis_py() -> None:
    from redis.asyncio.cluster import RedisCluster

    assert LeanRedis.for_client(RedisCluster(host="127.0.0.1", port=1)) is None
    tls = redis.asyncio.Redis.from_url("rediss://127.0.0.1:1/0")
    assert LeanRedis.for_client(tls) is None
    assert LeanRedis.for_client(redis.asyncio.Redis.from_url("unix:///tmp/x.sock")) is not None


def test_connections_killed_mid_traffic_are_redialled_and_every_batch_answered(
    redis_url: str,
) -> None:
    """Redis drops the connection under batches in flight (CLIENT KILL, as a failover
    or a `timeout` would): they are retried on a new connection and each gets its own
    replies (that a late failure on the old one leaves the new one alone: below)."""

    async def scenario() -> tuple[list[bool], int]:
        client = redis.asyncio.Redis.from_url(redis_url)
        killer = redis.asyncio.Redis.from_url(redis_url)
        lean = LeanRedis.for_client(client)
        assert lean is not None
        kills = 0

        async def one(n: int) -> bool:
            await asyncio.sleep(random.random() / 50)
            pipe = LeanPipe()
            pipe.execute_command("ECHO", f"m{n}")
            pipe.execute_command("ECHO", f"n{n}")
            return await lean.execute(pipe) == [f"m{n}".encode(), f"n{n}".encode()]

        async def kill() -> None:
            nonlocal kills
            for _ in range(3):
                await asyncio.sleep(random.random() / 50)
                kills += await killer.client_kill_filter(_type="normal", skipme=True)

        results: list[bool] = []
        for _ in range(5):
            *batch, _ = await asyncio.gather(*(one(n) for n in range(100)), kill())
            results += batch
        lean.close()
        await client.aclose()
        await killer.aclose()
        return results, kills

    results, kills = asyncio.run(scenario())
    assert kills > 0
    assert all(results), results.count(False)


def test_forgetting_an_old_link_leaves_the_new_one_alone() -> None:
    lean = LeanRedis({"host": "127.0.0.1", "port": 1}, unix=False)
    old, new = _Link(), _Link()
    lean._link = new
    lean._forget(old)
    assert lean._link is new
    lean._forget(new)
    assert lean._link is None
