"""The Redis Streams history (`--history redis`): one stream per user, which outlives the
sidecar that wrote it — a user's new owner after a crash (kill -9) serves the replay.

Keys: `history:{T}:<user>` — the tenant's hash tag, like every key of a tenant, so a
record for many users of one tenant is one script on one Redis Cluster slot. An entry's
stream ID *is* its offset: `EPOCH-SEQ` (offset `EPOCH:SEQ`), where EPOCH is random,
chosen when the stream is created, and SEQ counts up by one — so a gap is visible
(`window_exceeded`) and a stream that expired or was lost starts a new epoch
(`unknown_offset`). Each entry holds the frame and the Redis time it was recorded
(`t`, for the window). Bounds: MAXLEN (exact) per stream, and a TTL of one window,
renewed by every record: a user with no message for a window has no stream left.

Order: every call goes through one queue and one pipeline at a time, so records are
made — and their messages delivered (`then`) — in the order the owner asked for them,
and a replay's read sees every record asked before it. A record that fails (Redis
unreachable) still delivers, without offsets, and the next record of those users starts
a new epoch: what the stream missed can never be vouched for.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis

from wsop import protocol
from wsop.acl import keys
from wsop.sidecar.history import HistoryLimits, Replay

log = logging.getLogger("wsop.sidecar.history")

MAX_QUEUED: Final = 100_000
"""Calls waiting for Redis past which records fail at once (delivered without offset)."""

# Append one frame to the streams of several users of one tenant.
# KEYS: their streams. ARGV: frame, maxlen, ttl ms, epoch base, then one flag per key
# ('1': start a new epoch — a record of that user was lost). Returns the entry IDs.
RECORD_LUA = """
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local out = {}
for i, key in ipairs(KEYS) do
  local last = {}
  if ARGV[4 + i] == '1' then
    redis.call('DEL', key)
  else
    last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  end
  local id
  if #last == 0 then
    redis.call('DEL', key)  -- (an empty stream would refuse a smaller epoch)
    id = string.format('%d', tonumber(ARGV[4]) + i) .. '-1'
  else
    local e, s = string.match(last[1][1], '^(%d+)-(%d+)$')
    id = e .. '-' .. string.format('%d', tonumber(s) + 1)
  end
  redis.call('XADD', key, 'MAXLEN', ARGV[2], id, 'f', ARGV[1], 't', now)
  redis.call('PEXPIRE', key, ARGV[3])
  out[i] = id
end
return out
"""


# A replay's read, in one script on the user's stream (so on a cluster it goes to that
# stream's node; a pipelined TIME has no key to be routed by). KEYS: the stream. ARGV:
# the client's entry ID, how many entries at most. Returns Redis time, the last entry,
# the entries from the client's one on.
READ_LUA = """
return {
  redis.call('TIME'),
  redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1),
  redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2]),
}
"""


def _entries(raw: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Stream entries as a script returns them ([id, [field, value, …]]) as (id, fields)."""
    return [
        (entry_id, {_text(k): v for k, v in zip(f[::2], f[1::2], strict=True)})
        for entry_id, f in raw
    ]


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id(offset_epoch: str, seq: int) -> str:
    return f"{offset_epoch}-{seq}"


@dataclass
class _Record:
    tenant: str
    users: Sequence[Hashable]
    frame: str
    then: Callable[[list[str]], None]


@dataclass
class _Read:
    tenant: str
    user: Hashable
    since: tuple[str, int]
    done: asyncio.Future[Replay]


def parse_read(replies: list[Any], since: tuple[str, int], limits: HistoryLimits,
               lost_before_ms: float) -> Replay:  # fmt: skip
    """What READ_LUA found — Redis time, the last entry, the entries from the client's
    one on — judged as the memory backend would (`MemoryHistory.read`)."""
    clock, last, found = replies
    now_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000
    epoch, seq = since
    if not last:
        return Replay(False, protocol.UNKNOWN_OFFSET)
    last_epoch, _, last_seq = _text(last[0][0]).partition("-")
    if last_epoch != epoch or seq > int(last_seq):
        return Replay(False, protocol.UNKNOWN_OFFSET)
    if not found or _text(found[0][0]) != _id(epoch, seq):
        return Replay(False, protocol.WINDOW_EXCEEDED)  # trimmed: entries after it too
    fields = {_text(k): v for k, v in found[0][1].items()}
    seen_at = int(fields["t"])
    if now_ms - seen_at > limits.max_age_s * 1000:
        return Replay(False, protocol.WINDOW_EXCEEDED)
    if seen_at < lost_before_ms:
        return Replay(False, protocol.PRESENCE_LOST)
    entries = []
    for entry_id, entry in found[1:]:
        stream_epoch, _, entry_seq = _text(entry_id).partition("-")
        frame = _text({_text(k): v for k, v in entry.items()}["f"])
        entries.append((protocol.format_offset(stream_epoch, int(entry_seq)), frame))
    return Replay(True, entries=entries, epoch=epoch, upto=int(last_seq))


class RedisHistory:
    """`wsop.sidecar.delivery.Recorder` and the replay's source, on Redis Streams."""

    sync = False
    shared = True

    def __init__(
        self, client: Any, limits: HistoryLimits, metrics: Any, spawn: Callable[[Any], None]
    ) -> None:
        self.client = client
        self.limits = limits
        self.metrics = metrics
        self._spawn = spawn
        self._record_sha, self._read_sha = _sha(RECORD_LUA), _sha(READ_LUA)
        self._loaded = False
        """Our scripts are in every primary's script cache (as far as we know)."""
        self._queue: deque[_Record | _Read] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._reset: set[tuple[str, Hashable]] = set()
        self.lost_before_ms = float("-inf")
        self.ttl_ms = int(limits.max_age_s * 1000)

    def record_now(self, tenant: str, users: Sequence[Hashable], frame: str) -> list[str]:
        raise TypeError("the Redis history records asynchronously")  # pragma: no cover

    def foreign(self, tenant: str, users: Sequence[Hashable]) -> None:
        """Nothing to do: every sidecar reaches the same streams."""

    def data_lost(self, before_s: float) -> None:
        self.lost_before_ms = time.time() * 1000 - before_s * 1000

    def record_later(
        self, tenant: str, users: Sequence[Hashable], frame: str, then: Callable[[list[str]], None]
    ) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self._failed(_Record(tenant, users, frame, then), "too many records waiting")
            return
        self._queue.append(_Record(tenant, users, frame, then))
        self._kick()

    async def read(self, tenant: str, user: Hashable, since: str) -> Replay:
        parsed = protocol.parse_offset(since)
        if parsed is None:
            return Replay(False, protocol.MALFORMED_OFFSET)
        done: asyncio.Future[Replay] = asyncio.get_running_loop().create_future()
        self._queue.append(_Read(tenant, user, parsed, done))
        self._kick()
        return await done

    def _kick(self) -> None:
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """One pipeline at a time, each with every call queued meanwhile, in order."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            calls = list(self._queue)
            self._queue.clear()
            try:
                await self._execute(calls)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: records deliver without offsets
                for call in calls:
                    if isinstance(call, _Record):
                        self._failed(call, exc)
                    elif not call.done.done():
                        call.done.set_result(Replay(False, protocol.HISTORY_UNAVAILABLE))

    async def _execute(self, calls: list[_Record | _Read], retry: bool = True) -> None:
        """One pipeline for `calls`. The record script goes as a plain EVALSHA (redis-py's
        cluster pipeline refuses its script helper, as it does `.bitop()`; the generic
        form routes by the first stream's slot — all of one tenant); a Redis that lost
        its script cache (restart, failover) gets it again and the records run again."""
        if not self._loaded:
            for script in (RECORD_LUA, READ_LUA):  # (on every primary of a cluster)
                await self.client.script_load(script)
            self._loaded = True
        pipe = self.client.pipeline(transaction=False)
        spans: list[int] = []
        for call in calls:
            if isinstance(call, _Record):
                streams = [keys.history_key(call.tenant, u) for u in call.users]
                reset = ["1" if (call.tenant, u) in self._reset else "0" for u in call.users]
                base = random.randrange(1, 1 << 40)
                args = [call.frame, self.limits.max_messages, self.ttl_ms, base, *reset]
                pipe.execute_command("EVALSHA", self._record_sha, len(streams), *streams, *args)
                spans.append(1)
            else:
                stream = keys.history_key(call.tenant, call.user)
                epoch, seq = call.since
                count = self.limits.max_messages + 1
                pipe.execute_command("EVALSHA", self._read_sha, 1, stream, _id(epoch, seq), count)
                spans.append(1)
        replies = await pipe.execute(raise_on_error=False)
        if retry and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            self._loaded = False
            await self._execute(calls, retry=False)
            return
        at = 0
        for call, span in zip(calls, spans, strict=True):
            mine, at = replies[at : at + span], at + span
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if isinstance(call, _Record):
                if error is not None:
                    self._failed(call, error)
                    continue
                for user in call.users:
                    self._reset.discard((call.tenant, user))
                ids = [_text(i).replace("-", ":") for i in mine[0]]
                self._then(call, ids)
            elif not call.done.done():
                replay = Replay(False, protocol.HISTORY_UNAVAILABLE)
                if error is None:
                    clock, last, found = mine[0]
                    read = [clock, _entries(last), _entries(found)]
                    replay = parse_read(read, call.since, self.limits, self.lost_before_ms)
                call.done.set_result(replay)

    def _failed(self, call: _Record, why: object) -> None:
        log.warning("history: could not record for %d user(s): %s", len(call.users), why)
        self.metrics.record_failures.inc(len(call.users))
        self._reset.update((call.tenant, u) for u in call.users)
        self._then(call, [""] * len(call.users))

    def _then(self, call: _Record, offsets: list[str]) -> None:
        try:
            call.then(offsets)
        except Exception:  # a delivery's bug must not stop the history
            log.exception("delivering after a history record")

    async def close(self, timeout_s: float = 2.0) -> None:
        """Let the calls queued so far finish (their messages are delivered), then stop."""
        deadline = time.monotonic() + timeout_s
        while (self._queue or self._wake.is_set()) and time.monotonic() < deadline:
            if self._worker is None or self._worker.done():
                break
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
