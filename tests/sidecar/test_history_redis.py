"""The Redis Streams history against a real redis-server: what one pipeline carries."""

from __future__ import annotations

import asyncio

import redis.asyncio
from prometheus_client import CollectorRegistry

from wsop import protocol
from wsop.sidecar.history import HistoryLimits, Replay
from wsop.sidecar.history_redis import RedisHistory
from wsop.sidecar.recovery import HistoryMetrics


def _history(client: redis.asyncio.Redis) -> RedisHistory:
    metrics = HistoryMetrics(CollectorRegistry())
    return RedisHistory(client, HistoryLimits(), metrics, spawn=lambda _: None)


def _record(history: RedisHistory, tenant: str, users: list[object], frame: str):
    done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    history.record_later(tenant, users, frame, done.set_result)
    return done


def test_records_queued_behind_a_replay_read_get_one_offset_per_user(redis_url: str) -> None:
    """Reads and the records after them share one pipeline: each call must get its own
    script's reply. (Each record after a read used to be handed a slice of the read's
    reply: fewer offsets than users, its delivery raised and the message reached nobody
    — whole team messages lost without an ack right after a sidecar was killed.)"""

    async def scenario() -> tuple[list[Replay], list[list[str]]]:
        client = redis.asyncio.Redis.from_url(redis_url)
        history = _history(client)
        try:
            first = await _record(history, "hp", [7], '{"type":"message","n":0}')
            reads = [asyncio.ensure_future(history.read("hp", 7, first[0])) for _ in "ab"]
            await asyncio.sleep(0)  # the reads are queued first
            later = [
                _record(history, "hp", [7, 8, 9], f'{{"type":"message","n":{n}}}')
                for n in (1, 2, 3)
            ]
            return list(await asyncio.gather(*reads)), list(await asyncio.gather(*later))
        finally:
            await history.close()
            await client.aclose()

    replays, offsets = asyncio.run(scenario())
    assert all(r.ok and r.entries == [] and r.upto == 1 for r in replays), replays
    for recorded in offsets:
        assert len(recorded) == 3 and all(protocol.parse_offset(o) for o in recorded)
    sevens = [protocol.parse_offset(recorded[0]) for recorded in offsets]
    assert [seq for _, seq in sevens] == [2, 3, 4]  # user 7's stream went on, in order
