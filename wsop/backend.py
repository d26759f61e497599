"""Connecting to Redis: a standalone server, a Redis Cluster, or the embedded default.

The URL decides: `redis://`, `rediss://`, `unix://` for one server, and
`redis+cluster://host:port` (or `rediss+cluster://`) for a cluster, reached
through any one of its nodes. No URL means the embedded default.
"""

from __future__ import annotations

from typing import Union

import redis
from redis.cluster import RedisCluster

from wsop.errors import BackendUnavailable, UsageError

RedisClient = Union[redis.Redis, RedisCluster]  # noqa: UP007 - used at runtime in isinstance

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
PLAIN_SCHEMES = {"redis", "rediss", "unix"}
ASYNC_POOL_SIZE = 64
ASYNC_POOL_WAIT_S = 10.0


def connect(url: str | None = None, *, check: bool = True) -> RedisClient:
    """A client for `url` that has answered PING (unless `check` is off).

    Unreachable servers fail here with the URL in the message, not deep inside a
    command with a socket error.
    """
    from wsop.local.embedded import resolve_url  # (the embedded default lives there)

    target = resolve_url(url)
    scheme, sep, rest = target.partition("://")
    if not sep:
        raise UsageError(f"not a Redis URL: {target!r} (expected redis://host:port)")
    try:
        if scheme in CLUSTER_SCHEMES:
            client: RedisClient = RedisCluster.from_url(
                f"{CLUSTER_SCHEMES[scheme]}://{rest}", socket_timeout=10
            )
        elif scheme in PLAIN_SCHEMES:
            client = redis.Redis.from_url(target, socket_timeout=30)
        else:
            raise UsageError(
                f"unsupported Redis URL scheme {scheme!r} in {target!r} "
                "(use redis://, rediss://, unix:// or redis+cluster://)"
            )
        if check:
            client.ping()
    except UsageError:
        raise
    except (redis.RedisError, OSError, ValueError, IndexError) as exc:
        raise BackendUnavailable(f"cannot reach Redis at {target}: {_reason(exc)}") from exc
    return client


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def connect_async(url: str):
    """An asyncio client for `url` (already resolved; no PING — servers retry on their own)."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff

    scheme, sep, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return AsyncRedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}")
    if scheme in PLAIN_SCHEMES and sep:
        # A bounded pool that *waits* for a free connection: redis-py's default pool
        # raises MaxConnectionsError past 100 in-flight commands, which a burst of team
        # messages reaches; waiting is backpressure, raising was lost messages.
        # Retry on a dropped connection: after a Redis restart every pooled connection
        # is dead, and without a retry each one failed the next command given to it.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=ASYNC_POOL_SIZE,
            timeout=ASYNC_POOL_WAIT_S,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.01), 3),
            retry_on_error=[redis.ConnectionError],
        )
        return aioredis.Redis(connection_pool=pool)
    raise UsageError(f"unsupported Redis URL {url!r}")
