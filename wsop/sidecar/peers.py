"""Persistent, batching links to the other sidecars — that traffic cannot break.

One outgoing WebSocket per peer, kept open and re-dialled with backoff. Items queue
during a pass of the event loop and leave as batch frames at its end, written
synchronously while the link is up and its buffer is short (no task switch per batch);
dialling, backoff and a full buffer are the link task's job.

What traffic can do to a link, and what happens instead of breaking it:

- **Big items**: a batch is bounded by bytes as well as items (`MAX_BATCH_BYTES`), the
  receiving side accepts `PEER_MAX_FRAME_BYTES` (its own limit, far above the clients'),
  and a frame longer than `MAX_PIECE_BYTES` is sent in pieces (`peer_codec`). An item
  split across connections (the link broke between its pieces) is reported lost, never
  half-delivered.
- **Bursts**: the queue is bounded by bytes. Above `HIGH_BYTES` the link is *congested*
  and whoever feeds it waits (`wait_ready`: client sessions stop reading) until it
  is below `LOW_BYTES` — both small, because every sender sharing the link waits
  behind its queue; only past `MAX_QUEUE_BYTES` is an item refused — and reported.
- **Membership changes**: a peer that leaves the membership keeps its link for
  `LINGER_S` (its clients are being moved off it; answers and holder deliveries must
  still reach it).

Every item that cannot be sent goes to `on_lost`, which counts it and settles its ack —
except answers (`Ack`) to a peer we have no link to yet: that peer just joined and
forwarded to us before we adopted the membership naming it, so its answers wait (parked,
up to `PARK_S`) for that membership. After a link is re-established, `on_connected`
lets the sidecar re-send its registrations (a `Holding` may have died with the old
connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.protocol import State

from wsop.sidecar.peer_codec import Ack, PeerItem, encode_batch, encode_pieces

log = logging.getLogger("wsop.sidecar.peers")

PEER_MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
"""What a sidecar accepts in one frame on `/peer` (a batch plus a piece, with room)."""
MAX_BATCH_BYTES: Final = 512 * 1024
MAX_PIECE_BYTES: Final = 512 * 1024
MAX_BATCH_ITEMS: Final = 512
HIGH_BYTES: Final = 2 * 1024 * 1024
LOW_BYTES: Final = 512 * 1024
MAX_QUEUE_BYTES: Final = 64 * 1024 * 1024
DIAL_TIMEOUT_S: Final = 2.0
GIVE_UP_AFTER_S: Final = 3.0
LINGER_S: Final = 30.0
"""How long a link to a peer that left the membership is kept (its drain and its
answers to messages in flight take seconds, not minutes)."""
PARK_S: Final = 10.0
"""How long an answer to a peer we have no link to yet waits for the membership that
names it (its sender already knows it: the two adopt a change a few hundred ms apart)."""
MAX_PARKED: Final = 10_000
WRITE_HIGH: Final = 256 * 1024
"""Above this many unsent bytes in the socket, batches wait for the link task (which
awaits a drain)."""
_CONTINUATION: Final = '["+"]'

LostCallback = Callable[[str, list[PeerItem]], None]


class PeerLink:
    """The link to one peer; `send` never blocks the caller."""

    def __init__(
        self,
        me: str,
        peer: str,
        url: str,
        admin_token: str | None,
        on_lost: LostCallback,
        on_connected: Callable[[str], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.me, self.peer, self.url = me, peer, url
        self._ssl = ssl_context if url.startswith("wss://") else None
        self._token = admin_token
        self._on_lost = on_lost
        self._on_connected = on_connected
        # (encoded text, item): a frame in pieces carries its item on the last piece only
        self._queue: deque[tuple[str, PeerItem | None]] = deque()
        self.queued_bytes = 0
        self._ready = asyncio.Event()
        self._ready.set()
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._scheduled = False
        self._closing = False
        self.lingering_until: float | None = None
        """Set while the peer is out of the membership (the link is closed after it)."""
        self.failing_since: float | None = None
        """When dialling it started to fail (loop time); None while it connects."""
        self._task = asyncio.create_task(self._run(), name=f"peer-{peer}")

    # -- feeding the queue -------------------------------------------------------------

    def send(self, item: PeerItem) -> None:
        if self._closing:
            self._on_lost(self.peer, [item])
            return
        texts = encode_pieces(item, MAX_PIECE_BYTES)
        size = sum(map(len, texts))
        if self.queued_bytes + size > MAX_QUEUE_BYTES:
            log.warning("link to %s: queue full (%d bytes): item refused", self.peer, size)
            self._on_lost(self.peer, [item])
            return
        for text in texts[:-1]:
            self._queue.append((text, None))
        self._queue.append((texts[-1], item))
        self._grow(size)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    @property
    def unreachable(self) -> bool:
        """The connection broke and no dial has succeeded since."""
        return self.failing_since is not None

    @property
    def congested(self) -> bool:
        return not self._ready.is_set()

    async def wait_ready(self) -> None:
        """Until the queue is short again (or the link is closing)."""
        await self._ready.wait()

    def _grow(self, size: int) -> None:
        self.queued_bytes += size
        if self.queued_bytes > HIGH_BYTES and self._ready.is_set():
            self._ready.clear()

    def _shrink(self, size: int) -> None:
        self.queued_bytes -= size
        if self.queued_bytes < LOW_BYTES and not self._ready.is_set():
            self._ready.set()

    def _take_batch(self) -> list[tuple[str, PeerItem | None]]:
        """Up to `MAX_BATCH_BYTES` / `MAX_BATCH_ITEMS` from the head (at least one)."""
        queue, batch, size = self._queue, [], 0
        while queue and len(batch) < MAX_BATCH_ITEMS:
            text = queue[0][0]
            if batch and size + len(text) > MAX_BATCH_BYTES:
                break
            batch.append(queue.popleft())
            size += len(text) + 1
        self._shrink(sum(len(text) for text, _ in batch))
        return batch

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
        while self._queue and ws.transport.get_write_buffer_size() <= WRITE_HIGH:
            batch = self._take_batch()
            ws.protocol.send_text(encode_batch([text for text, _ in batch]).encode())
            ws.send_data()
        if self._queue:
            self._wake.set()

    # -- the link task -----------------------------------------------------------------

    async def _dial(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        return await asyncio.wait_for(
            connect(
                f"{self.url}/peer?from={self.me}",
                ssl=self._ssl,
                additional_headers=headers,
                max_size=None,
                ping_interval=20,
                close_timeout=1,
            ),
            DIAL_TIMEOUT_S,
        )

    def _drop_orphan_pieces(self) -> None:
        """A new connection must not start inside a frame whose first pieces went out on
        the old one: the rest of that frame is dropped and its item reported lost."""
        while self._queue and self._queue[0][0].startswith(_CONTINUATION):
            text, item = self._queue.popleft()
            self._shrink(len(text))
            if item is not None:
                self._on_lost(self.peer, [item])

    async def _run(self) -> None:
        ws: ClientConnection | None = None
        dialled_before = False
        loop = asyncio.get_running_loop()
        while not self._closing:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue  # (woken by `close` too)
            try:
                if ws is None:
                    ws = await self._dial()
                    self._drop_orphan_pieces()
                    self._ws = ws
                    self.failing_since = None
                    if dialled_before and self._on_connected is not None:
                        self._on_connected(self.peer)
                    dialled_before = True
                if not self._queue:
                    continue
                if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
                    raise ConnectionError("link closed")  # nothing taken: the next one
                batch = self._take_batch()
                try:
                    await ws.send(encode_batch([text for text, _ in batch]))
                except BaseException:
                    # It may have reached the peer or not: report it lost rather than
                    # send it twice (acks then under-report; nothing is delivered twice).
                    self._on_lost(self.peer, [item for _, item in batch if item is not None])
                    raise
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, WebSocketException) as exc:
                ws = self._ws = None
                now = loop.time()
                self.failing_since = self.failing_since or now
                if now - self.failing_since >= GIVE_UP_AFTER_S:
                    self.give_up(f"unreachable ({exc})")
                    self.failing_since = None
                await asyncio.sleep(0.1)

    def give_up(self, why: str) -> None:
        lost = [item for _, item in self._queue if item is not None]
        self._queue.clear()
        self._shrink(self.queued_bytes)
        if lost:
            log.warning("peer %s %s: %d items lost", self.peer, why, len(lost))
            self._on_lost(self.peer, lost)

    async def close(self) -> None:
        self._closing = True
        # give queued items a moment to leave before the link goes
        for _ in range(20):
            if not self._queue:
                break
            await asyncio.sleep(0.05)
        self._wake.set()
        # Python 3.11's wait_for can swallow a cancel that lands as the dial completes;
        # `_closing` ends the loop anyway, and we never wait for the task unboundedly.
        for _ in range(3):
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=1.0)
            if done:
                break
        with contextlib.suppress(asyncio.CancelledError, Exception):
            if self._task.done():
                self._task.result()
        if self._ws is not None:
            self._ws.transport.abort()
        self.give_up("closed")
        self._ready.set()


class PeerLinks:
    """The set of links, kept in step with the membership."""

    def __init__(
        self,
        me: str,
        admin_token: str | None,
        on_lost: LostCallback,
        on_connected: Callable[[str], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.me = me
        self._ssl = ssl_context
        """Trusts the peers' certificates when their URLs are wss://."""
        self._token = admin_token
        self._on_lost = on_lost
        self._on_connected = on_connected
        self._links: dict[str, PeerLink] = {}
        self._urls: dict[str, str] = {}
        self._parked: dict[str, list[tuple[float, PeerItem]]] = {}

    async def update(self, members: dict[str, str]) -> None:
        """Follow the membership: new peers get a link; peers that left keep theirs for
        `LINGER_S`; a peer whose url changed gets a new one."""
        wanted = {n: u for n, u in members.items() if n != self.me}
        now = time.monotonic()
        for name in list(self._links):
            link = self._links[name]
            if name in wanted and wanted[name] == self._urls[name]:
                link.lingering_until = None
            elif name in wanted or (link.lingering_until or now + LINGER_S) <= now:
                await self._drop(name)
            elif link.lingering_until is None:
                link.lingering_until = now + LINGER_S
                if link.unreachable:  # (killed): what waits for it goes elsewhere now
                    link.give_up("left the membership while unreachable")
        for name, url in wanted.items():
            if name not in self._links:
                self._links[name] = PeerLink(
                    self.me, name, url, self._token, self._on_lost, self._on_connected, self._ssl
                )
                self._urls[name] = url
        self._unpark()

    async def expire_lingering(self) -> None:
        """Close the links to departed peers whose linger is over (call periodically)."""
        now = time.monotonic()
        for name, link in list(self._links.items()):
            if link.lingering_until is not None and link.lingering_until <= now:
                await self._drop(name)

    async def _drop(self, name: str) -> None:
        link = self._links.pop(name)
        del self._urls[name]
        await link.close()

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

    def congested(self, peers: object = None) -> list[PeerLink]:
        """The congested links (among `peers`, an iterable of names, when given)."""
        links = self._links.values() if peers is None else map(self._links.get, peers)
        return [link for link in links if link is not None and link.congested]

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
        for name in list(self._links):
            await self._drop(name)
