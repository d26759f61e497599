"""A lean pipelined Redis connection for the hottest round trip: team resolutions.

Every team message costs its sender's sidecar one pipeline of about nine commands
(`wsop.acl.pipeline.queue_resolve`, plus the presence epoch). Through redis-py's asyncio
pipeline that round trip costs ~120 µs of CPU — a pipeline object, per-command packing
and response callbacks, a pooled connection, a timeout context, the retry wrapper —
against ~27 µs for the same bytes written on one asyncio protocol and read back with
hiredis (the same machine, one client, 3,000 round trips). In bench/peers.py's team row
that difference was most of what wsop's sidecars spent beyond Socket.IO's node
processes.

`LeanRedis` keeps one connection and pipelines every batch on it in order (Redis
answers in order, so replies are matched by count). It speaks RESP2 to a plain Redis
(TCP or a Unix socket, with AUTH and SELECT as the URL says); anything else — a cluster,
TLS, a credential provider, RESP3 — gets None from `for_client` and stays on redis-py.
What redis-py's pool was given for a restart is kept: a dropped connection is dialled
again and the batch retried (a resolution is read-only but for its scratch key, so a
retry is harmless), three attempts with a short backoff, then `redis.ConnectionError`.
Error replies are redis-py's exception instances (its own parser's mapping), so callers
check them exactly as before; one that means the server is not serving yet (LOADING
after a restart) has the batch retried too, on the same connection. Arguments are
encoded by redis-py's own `Encoder`, and `LeanRedis.pipeline()` hands out pipes with
redis-py's `execute(raise_on_error=False)`, so a caller treats both alike.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import Any

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

ATTEMPTS = 3
BACKOFF_S = (0.01, 0.05)
_encode = Encoder("utf-8", "strict", False).encode  # (wsop's keys and arguments are ASCII)


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP (an array of bulk strings), each argument as redis-py's
    encoder gives it (str as UTF-8, int and float as their text, anything else refused)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class LeanPipe:
    """Collects commands under the names of redis-py's pipeline methods that the
    resolution uses, so the same `queue` functions fill either kind."""

    __slots__ = ("parts", "_redis")

    def __init__(self, owner: LeanRedis | None = None) -> None:
        self.parts: list[bytes] = []
        self._redis = owner

    def __len__(self) -> int:
        return len(self.parts)

    async def execute(self, raise_on_error: bool = False) -> list[Any]:
        """As redis-py's pipeline with `raise_on_error=False` (the only way it is used)."""
        assert self._redis is not None and not raise_on_error
        return await self._redis.execute(self)

    def execute_command(self, *args: Any) -> None:
        self.parts.append(pack(args))

    def exists(self, *names: Any) -> None:
        self.execute_command("EXISTS", *names)

    def getbit(self, name: Any, offset: int) -> None:
        self.execute_command("GETBIT", name, offset)

    def pexpire(self, name: Any, ms: int) -> None:
        self.execute_command("PEXPIRE", name, ms)

    def getdel(self, name: Any) -> None:
        self.execute_command("GETDEL", name)

    def get(self, name: Any) -> None:
        self.execute_command("GET", name)

    def hget(self, name: Any, key: Any) -> None:
        self.execute_command("HGET", name, key)

    def delete(self, *names: Any) -> None:
        self.execute_command("DEL", *names)


class _Link(asyncio.Protocol):
    """One connection: batches written in order, replies handed back in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(
            protocolError=redis.exceptions.InvalidResponse, replyError=BaseParser.parse_error
        )
        self.waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] = deque()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, count: int) -> asyncio.Future[list[Any]]:
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            done.set_exception(redis.ConnectionError("connection to Redis lost"))
            return done
        self.waiting.append((count, [], done))
        self.transport.write(data)
        return done

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        while waiting:
            try:
                reply = reader.gets()
            except Exception as exc:  # not RESP: nothing more on this connection is usable
                self._fail(redis.ConnectionError(f"bad reply from Redis: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                return
            count, replies, done = waiting[0]
            replies.append(reply)
            if len(replies) == count:
                waiting.popleft()
                if not done.done():
                    done.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        while self.waiting:
            _, _, done = self.waiting.popleft()
            if not done.done():
                done.set_exception(exc)


class LeanRedis:
    """Pipelines batches of commands on one connection (see the module docstring)."""

    def __init__(self, kwargs: dict[str, Any], unix: bool) -> None:
        self._kwargs = kwargs
        self._unix = unix
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None

    @classmethod
    def for_client(cls, client: Any) -> LeanRedis | None:
        """A lean twin of redis-py's `client` when it is a plain RESP2 client, else None."""
        pool = getattr(client, "connection_pool", None)
        if pool is None:  # a cluster client
            return None
        kind = pool.connection_class
        kwargs = pool.connection_kwargs
        if kind not in (Connection, UnixDomainSocketConnection):
            return None  # TLS, or something we do not know
        if kwargs.get("credential_provider") or kwargs.get("protocol") not in (None, 2, "2"):
            return None
        return cls(dict(kwargs), kind is UnixDomainSocketConnection)

    def pipeline(self, transaction: bool = False) -> LeanPipe:
        """A pipe that runs on this connection (never a MULTI transaction)."""
        assert not transaction
        return LeanPipe(self)

    async def execute(self, pipe: LeanPipe) -> list[Any]:
        """Every command's reply, in order; error replies as exception instances."""
        data, count = b"".join(pipe.parts), len(pipe.parts)
        for attempt in range(1, ATTEMPTS + 1):
            link = self._link
            try:
                if link is None or link.lost is not None:
                    link = await self._connect()
                replies = await link.send(data, count)
            except (OSError, redis.ConnectionError) as exc:
                self._forget(link)
                if attempt == ATTEMPTS:
                    if isinstance(exc, redis.ConnectionError):
                        raise
                    raise redis.ConnectionError(f"cannot reach Redis: {exc}") from None
            else:
                loading = next((r for r in replies if isinstance(r, redis.ConnectionError)), None)
                if loading is None:
                    return replies
                if attempt == ATTEMPTS:  # LOADING (a restarted Redis): not serving yet
                    raise loading
            await asyncio.sleep(random.uniform(*BACKOFF_S) * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._forget(self._link)

    def _forget(self, link: _Link | None) -> None:
        """Drop `link` — only it: batches that failed on an old connection must not close
        the new one another batch has dialled meanwhile."""
        if link is None:
            return
        if self._link is link:
            self._link = None
        if link.transport is not None:
            link.transport.abort()

    async def _connect(self) -> _Link:
        """One dial at a time: batches that find no connection wait for the same one (a
        finished dial is never reused: it is only asked for when its link is gone)."""
        connecting = self._connecting
        if connecting is None or connecting.done():
            connecting = self._connecting = asyncio.ensure_future(self._dial())
        return await asyncio.shield(connecting)

    async def _dial(self) -> _Link:
        loop = asyncio.get_running_loop()
        kw = self._kwargs
        timeout = kw.get("socket_connect_timeout") or 5
        if self._unix:
            dial = loop.create_unix_connection(_Link, kw["path"])
        else:
            dial = loop.create_connection(_Link, kw.get("host", "localhost"), kw.get("port", 6379))
        _, link = await asyncio.wait_for(dial, timeout)
        try:
            await self._setup(link, timeout)
        except BaseException:
            assert link.transport is not None
            link.transport.abort()
            raise
        self._link = link
        return link

    async def _setup(self, link: _Link, timeout: float) -> None:
        """AUTH and SELECT as the URL says, before the link carries anything else."""
        kw = self._kwargs
        setup: list[tuple[Any, ...]] = []
        if kw.get("password") is not None:
            user = kw.get("username")
            setup.append(("AUTH", user, kw["password"]) if user else ("AUTH", kw["password"]))
        if kw.get("db"):
            setup.append(("SELECT", kw["db"]))
        if setup:
            replies = await asyncio.wait_for(
                link.send(b"".join(pack(c) for c in setup), len(setup)), timeout
            )
            for reply in replies:
                if isinstance(reply, Exception):
                    raise redis.ConnectionError(f"Redis refused the connection setup: {reply}")
