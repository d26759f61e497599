"""PipelineBatch against a real redis-server: one pipeline per pass, each its replies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio

from wsop.acl.batch import PipelineBatch
from wsop.local.redis_binary import free_port


class Counting:
    """A client whose pipelines are counted."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.pipelines = 0

    def pipeline(self, transaction: bool = False) -> Any:
        self.pipelines += 1
        return self.client.pipeline(transaction=transaction)


def test_callers_of_one_pass_share_a_pipeline_and_get_their_own_replies(redis_url: str) -> None:
    async def scenario() -> tuple[list[Any], int, int]:
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.set("batch:head", "h")
        counting = Counting(client)
        batch = PipelineBatch(counting, head=lambda pipe: pipe.get("batch:head"))

        def incr(n: int):
            def queue(pipe: Any) -> None:
                pipe.delete(f"batch:{n}")
                pipe.execute_command("INCRBY", f"batch:{n}", n)

            return queue

        def bad(pipe: Any) -> None:
            raise ValueError("not a command")

        calls = [batch.run(incr(n)) for n in range(1, 6)] + [batch.run(bad)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        one_pass = counting.pipelines
        await batch.run(incr(7))  # a later pass: a pipeline of its own
        await client.aclose()
        return results, one_pass, counting.pipelines

    results, one_pass, total = asyncio.run(scenario())
    assert one_pass == 1 and total == 2
    assert [(head, replies[1]) for head, replies in results[:5]] == [
        ([b"h"], n) for n in range(1, 6)
    ]
    assert isinstance(results[5], ValueError)


def test_a_round_trip_that_fails_raises_in_every_caller() -> None:
    async def scenario() -> list[Any]:
        client = redis.asyncio.Redis(port=free_port(), socket_connect_timeout=1)
        batch = PipelineBatch(client)
        calls = [batch.run(lambda pipe: pipe.get("x")) for _ in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await client.aclose()
        return results

    results = asyncio.run(scenario())
    assert all(isinstance(r, redis.ConnectionError) for r in results), results


@pytest.mark.parametrize("cancelled", [0, 1])
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "redis-py"])
def test_a_caller_that_gave_up_is_skipped(redis_url: str, cancelled: int, lean: bool) -> None:
    async def scenario() -> Any:
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.set("batch:gave-up", "v")
        batch = PipelineBatch(client if lean else Counting(client))

        def bad(pipe: Any) -> None:
            raise ValueError("not a command")

        calls = [batch.run(lambda pipe: pipe.get("batch:gave-up")) for _ in range(2)]
        calls.append(batch.run(bad))
        calls[cancelled].cancel()
        calls[2].cancel()  # gave up, and its queue fails: nobody else may suffer for it
        got = await calls[1 - cancelled]
        await client.aclose()
        return got

    assert asyncio.run(scenario()) == ([], [b"v"])
