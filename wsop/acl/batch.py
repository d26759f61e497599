"""Redis calls made in one pass of the event loop share one pipeline.

A sidecar under team traffic resolves many team messages at once (a trunk read carries
several clients' frames), and profiles put a quarter of its CPU in redis-py's fixed cost
per pipeline — taking a pooled connection, the timeout context, one write and one read —
not in the commands. `PipelineBatch` queues each caller's commands on one pipeline that
runs at the end of the pass, with a *head* (commands every caller wants answered, e.g.
the presence epoch) once in front, and hands each caller its own replies.

On a plain Redis the pipeline is a `wsop.acl.resp.LeanPipe` on one lean connection
(a quarter of redis-py's CPU per round trip); a cluster or a TLS connection keeps
redis-py's pipeline. Both take the same `queue` functions and give the same replies.

Errors stay each caller's: a command's error is in its replies (`raise_on_error=False`,
as before), a failed round trip (Redis unreachable) raises in every caller of that
batch, and a caller that gave up meanwhile (cancelled) is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from wsop.acl.resp import LeanRedis

Queue = Callable[[Any], None]
"""Adds one caller's commands to the pipeline it is given."""


class PipelineBatch:
    def __init__(self, client: Any, head: Queue | None = None) -> None:
        self.client = client
        self._pipes: Any = LeanRedis.for_client(client) or client
        """What pipelines come from: the lean connection where it applies, else redis-py."""
        self._head = head
        self._calls: list[tuple[Queue, asyncio.Future[tuple[list[Any], list[Any]]]]] = []
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    def run(self, queue: Queue) -> asyncio.Future[tuple[list[Any], list[Any]]]:
        """(head replies, this caller's replies) once the pipeline that carries it ran."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[list[Any], list[Any]]] = loop.create_future()
        self._calls.append((queue, done))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start)
        return done

    def _start(self) -> None:
        self._scheduled = False
        calls, self._calls = self._calls, []
        task = asyncio.ensure_future(self._execute(calls))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, calls: list[tuple[Queue, asyncio.Future[Any]]]) -> None:
        pipe = self._pipes.pipeline(transaction=False)
        if self._head is not None:
            self._head(pipe)
        heads = len(pipe)
        spans: list[tuple[int, int] | None] = []
        for queue, done in calls:
            start = len(pipe)
            try:
                queue(pipe)
            except Exception as exc:  # (a caller's bad input: its own error)
                if not done.done():  # (unless it gave up meanwhile)
                    done.set_exception(exc)
                spans.append(None)
                continue
            spans.append((start, len(pipe)))
        if all(span is None for span in spans):
            return
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, done in calls:
                if not done.done():
                    done.set_exception(exc)
            return
        head = replies[:heads]
        for (_, done), span in zip(calls, spans, strict=True):
            if span is not None and not done.done():
                done.set_result((head, replies[span[0] : span[1]]))
