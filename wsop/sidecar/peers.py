"""Persistent, batching links to the other sidecars.

One outgoing WebSocket per peer, kept open and re-dialled with backoff. Items queue
during a pass of the event loop and leave as one batch frame at its end, written
synchronously while the link is up and its buffer is short (no task switch per batch);
dialling, backoff and a full buffer are the link task's job. So a busy sidecar sends a
few large frames instead of one per message. Items that cannot be sent (the peer is gone)
are handed to `on_lost` so they are counted as failed deliveries, never dropped silently
— except answers (`Ack`) to a peer we have no link to yet: that peer just joined and
forwarded to us before we adopted the membership naming it, so its answers wait (parked,
up to `PARK_S`) for that membership instead of being lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.protocol import State

from wsop.sidecar.peer_codec import Ack, PeerItem, encode_batch, encode_item

log = logging.getLogger("wsop.sidecar.peers")

MAX_BATCH_ITEMS = 512
MAX_QUEUE = 100_000
DIAL_TIMEOUT_S = 2.0
GIVE_UP_AFTER_S = 3.0
PARK_S = 10.0
"""How long an answer to a peer we have no link to yet waits for the membership that
names it (its sender already knows it: the two adopt a change a few hundred ms apart)."""
MAX_PARKED = 10_000
WRITE_HIGH = 256 * 1024
"""Above this many unsent bytes, batches wait for the link task (which awaits a drain)."""


class PeerLink:
    """The link to one peer; `send` never blocks the caller."""

    def __init__(
        self,
        me: str,
        peer: str,
        url: str,
        admin_token: str | None,
        on_lost: Callable[[str, list[PeerItem]], None],
    ) -> None:
        self.me, self.peer, self.url = me, peer, url
        self._token = admin_token
        self._on_lost = on_lost
        self._queue: list[tuple[PeerItem, str]] = []
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._scheduled = False
        self._task = asyncio.create_task(self._run(), name=f"peer-{peer}")
        self._closing = False

    def send(self, item: PeerItem) -> None:
        if self._closing or len(self._queue) >= MAX_QUEUE:
            self._on_lost(self.peer, [item])
            return
        self._queue.append((item, encode_item(item)))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """End of the pass: write the queue now if the link can take it, else wake the task."""
        self._scheduled = False
        ws = self._ws
        if not self._queue:
            return
        if (
            ws is None
            or ws.protocol.state is not State.OPEN
            or ws.transport.is_closing()
            or ws.transport.get_write_buffer_size() > WRITE_HIGH
        ):
            self._wake.set()
            return
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH_ITEMS], self._queue[MAX_BATCH_ITEMS:]
            ws.protocol.send_text(encode_batch([text for _, text in batch]).encode())
        ws.send_data()

    async def _dial(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        return await asyncio.wait_for(
            connect(
                f"{self.url}/peer?from={self.me}",
                additional_headers=headers,
                max_size=None,
                ping_interval=20,
                close_timeout=1,
            ),
            DIAL_TIMEOUT_S,
        )

    async def _run(self) -> None:
        ws: ClientConnection | None = None
        failing_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            try:
                if ws is None:
                    ws = await self._dial()
                    self._ws = ws
                    failing_since = None
                batch, self._queue = self._queue[:MAX_BATCH_ITEMS], self._queue[MAX_BATCH_ITEMS:]
                try:
                    await ws.send(encode_batch([text for _, text in batch]))
                except BaseException:
                    self._queue[:0] = batch  # unsent: retry on the next connection
                    raise
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, WebSocketException) as exc:
                ws = self._ws = None
                now = loop.time()
                failing_since = failing_since or now
                if now - failing_since >= GIVE_UP_AFTER_S:
                    lost, self._queue = self._queue, []
                    log.warning(
                        "peer %s unreachable (%s): %d items lost", self.peer, exc, len(lost)
                    )
                    self._on_lost(self.peer, [item for item, _ in lost])
                    failing_since = None
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        self._closing = True
        # give queued items a moment to leave before the link goes
        for _ in range(20):
            if not self._queue:
                break
            await asyncio.sleep(0.05)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._queue:
            self._on_lost(self.peer, [item for item, _ in self._queue])
            self._queue = []


class PeerLinks:
    """The set of links, kept in step with the membership."""

    def __init__(self, me: str, admin_token: str | None, on_lost) -> None:
        self.me = me
        self._token = admin_token
        self._on_lost = on_lost
        self._links: dict[str, PeerLink] = {}
        self._urls: dict[str, str] = {}
        self._parked: dict[str, list[tuple[float, PeerItem]]] = {}

    async def update(self, members: dict[str, str]) -> None:
        wanted = {n: u for n, u in members.items() if n != self.me}
        for name in list(self._links):
            if name not in wanted or wanted[name] != self._urls[name]:
                link = self._links.pop(name)
                del self._urls[name]
                await link.close()
        for name, url in wanted.items():
            if name not in self._links:
                self._links[name] = PeerLink(self.me, name, url, self._token, self._on_lost)
                self._urls[name] = url
        self._unpark()

    def send(self, peer: str, item: PeerItem) -> None:
        link = self._links.get(peer)
        if link is not None:
            link.send(item)
        elif isinstance(item, Ack):
            # A peer that just joined forwarded us a message before we adopted the
            # membership that names it: we delivered, and the answer must not be lost
            # (the peer would report the recipients undelivered after its ack timeout).
            self._park(peer, item)
        else:
            self._on_lost(peer, [item])

    def _park(self, peer: str, item: PeerItem) -> None:
        now = time.monotonic()
        for name in list(self._parked):  # answers nobody came for are dropped
            kept = [(t, i) for t, i in self._parked[name] if now - t < PARK_S]
            if kept:
                self._parked[name] = kept
            else:
                del self._parked[name]
        if sum(map(len, self._parked.values())) >= MAX_PARKED:
            log.warning("too many answers for unknown peers; dropping one for %s", peer)
            return
        self._parked.setdefault(peer, []).append((now, item))

    def _unpark(self) -> None:
        now = time.monotonic()
        for name in [n for n in self._parked if n in self._links]:
            for parked_at, item in self._parked.pop(name):
                if now - parked_at < PARK_S:
                    self._links[name].send(item)

    async def close(self) -> None:
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()
