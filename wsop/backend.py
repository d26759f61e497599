"""Connecting to Redis: a standalone server, a Redis Cluster, or the embedded default.

The URL decides: `redis://`, `rediss://`, `unix://` for one server, and
`redis+cluster://host:port` (or `rediss+cluster://`) for a cluster, reached
through any one of its nodes. No URL means the embedded default.
"""

from __future__ import annotations

from typing import Union

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from wsop.checks import redact_url
from wsop.errors import BackendUnavailable, UsageError

RedisClient = Union[redis.Redis, RedisCluster]  # noqa: UP007 - used at runtime in isinstance

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
PLAIN_SCHEMES = {"redis", "rediss", "unix"}
ASYNC_POOL_SIZE = 64
ASYNC_POOL_WAIT_S = 10.0


def connect(url: str | None = None, *, check: bool = True) -> RedisClient:
    """A client for `url` that has answered PING (unless `check` is off).

    Unreachable servers fail here with the URL in the message, not deep inside a
    command with a socket error. A URL that cannot be one (a port that is not a number,
    `?socket_timeout=abc`) is the user's typo: exit 2 "malformed Redis URL", not "cannot
    reach". Messages show the URL with its password redacted.
    """
    from wsop.local.embedded import resolve_url  # (the embedded default lives there)

    target = resolve_url(url)
    shown = redact_url(target)
    scheme, sep, rest = target.partition("://")
    if not sep:
        raise UsageError(f"not a Redis URL: {shown!r} (expected redis://host:port)")
    if scheme not in CLUSTER_SCHEMES and scheme not in PLAIN_SCHEMES:
        raise UsageError(
            f"unsupported Redis URL scheme {scheme!r} in {shown!r} "
            "(use redis://, rediss://, unix:// or redis+cluster://)"
        )
    _check_url_form(target, shown)
    try:
        if scheme in CLUSTER_SCHEMES:  # (connects to a node at once)
            client: RedisClient = RedisCluster.from_url(
                f"{CLUSTER_SCHEMES[scheme]}://{rest}", socket_timeout=10
            )
        else:
            client = redis.Redis.from_url(target, socket_timeout=30)
    except (ValueError, IndexError, TypeError) as exc:  # redis-py parsing the URL
        raise UsageError(f"malformed Redis URL {shown!r}: {_reason(exc)}") from None
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        raise BackendUnavailable(f"cannot reach Redis at {shown}: {_reason(exc)}") from None
    if check:
        try:
            client.ping()
        except redis.ResponseError as exc:
            if "DB index is out of range" in str(exc):
                raise UsageError(
                    f"malformed Redis URL {shown!r}: this server has no such database ({exc})"
                ) from None
            raise BackendUnavailable(f"cannot reach Redis at {shown}: {_reason(exc)}") from None
        except (redis.RedisError, RedisClusterException, OSError, ValueError) as exc:
            raise BackendUnavailable(f"cannot reach Redis at {shown}: {_reason(exc)}") from None
    return client


def _check_url_form(target: str, shown: str) -> None:
    """Host, port and database number as redis-py would read them, refused here with
    the reason: redis-py silently takes `/abc` as database 0, and its URL errors were
    reported as an unreachable server."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"malformed Redis URL {shown!r}: {exc}") from None
    if parts.scheme == "unix":
        return
    if port == 0:
        raise UsageError(f"malformed Redis URL {shown!r}: port 0")
    db = parts.path.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise UsageError(f"malformed Redis URL {shown!r}: database {db!r} is not a number")
    if db and "+cluster" in parts.scheme and int(db) != 0:
        raise UsageError(f"malformed Redis URL {shown!r}: a Redis Cluster has database 0 only")


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
    raise UsageError(f"unsupported Redis URL {redact_url(url)!r}")
