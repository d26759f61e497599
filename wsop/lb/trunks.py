"""The LB's trunks (`wsop lb --trunks N`): N persistent connections to each sidecar that
carry the sidecar legs of all its clients, one channel each (`wsop.trunk`).

Without trunks each client's sidecar leg is a TCP connection of its own, so a team
message to 50 clients behind this LB costs the sidecar 50 writes and the LB 50 reads
(and 50 writes). On a trunk the sidecar sends the 50 deliveries as one write, the LB
reads them as one read and writes each to its client: one syscall per recipient, not
three.

Only the transport under a sidecar leg changes. A channel is opened with the same
websockets client handshake a TCP leg does (`open_leg`: the client's query string and
Authorization, the LB's signed word), so the sidecar's handshake, refusals (403, 429,
503) and sessions are the ones of today; a relay, a move (`switch_to` dials the new
sidecar: a channel on *its* trunk) and closes work unchanged on top, because a channel
is an asyncio transport with the socket's behaviour (`wsop.trunk.channel`). A trunk that
is lost (its sidecar killed) ends all its channels as a reset socket would: each client
gets today's 1012.

A trunk is authenticated like a peer link: `/trunk` with the admin token (TLS with the
LB's CA for wss:// sidecars). When a sidecar will not take a trunk (down, or an older
version without `/trunk`), clients are dialled directly for `RETRY_S`: trunks are an
optimisation, never a new way to fail.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import asdict
from typing import Any, Final
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from wsop.detach import Detachable
from wsop.lb.handshake import LBClientConnection
from wsop.trunk.mux import OpeningTrunk, TrunkStats

log = logging.getLogger("wsop.lb")

TRUNK_PATH: Final = "/trunk"
RETRY_S: Final = 2.0
"""After a sidecar refused a trunk (or could not be reached), its clients are dialled
directly this long before a trunk is tried again."""


class TrunkHandshake(Detachable, ClientConnection):
    """The `/trunk` upgrade: detached into an `OpeningTrunk` once the 101 is read."""

    def _relayable(self) -> bool:
        return self.protocol.state is OPEN


class LBTrunks:
    """Up to `per_sidecar` trunks to each sidecar url, dialled as clients need them."""

    def __init__(
        self,
        per_sidecar: int,
        lb_name: str,
        admin_token: str,
        client_ssl: ssl.SSLContext | None,
        open_timeout: float,
    ) -> None:
        self.per_sidecar = per_sidecar
        self.stats = TrunkStats()
        self.fallbacks = 0
        """Sidecar legs dialled directly because no trunk to their sidecar was up."""
        self.dial_failures = 0
        self._name = lb_name
        self._token = admin_token
        self._ssl = client_ssl
        self._open_timeout = open_timeout
        self._trunks: dict[str, list[OpeningTrunk]] = {}
        self._dialing: dict[str, asyncio.Future[OpeningTrunk | Exception]] = {}
        self._down_until: dict[str, float] = {}
        self._closed = False

    async def pick(self, base_url: str) -> OpeningTrunk | None:
        """The trunk for a new channel to `base_url` (the least loaded), dialling one
        more while there are fewer than `per_sidecar`; None: dial directly.

        Raises what a direct dial would (OSError, TimeoutError) when the first trunk to
        a sidecar could not even be connected: dialling it again directly would only
        make the client wait twice for the same answer (503 "unavailable")."""
        live = [t for t in self._trunks.get(base_url, ()) if t.usable]
        if (
            len(live) < self.per_sidecar
            and not self._closed
            and time.monotonic() >= self._down_until.get(base_url, 0.0)
        ):
            dialing = self._dialing.get(base_url)
            if dialing is None:
                dialing = asyncio.ensure_future(self._dial(base_url))
                self._dialing[base_url] = dialing
                dialing.add_done_callback(lambda _: self._dialing.pop(base_url, None))
            if not live:  # the first one: wait for it (others use what is up meanwhile)
                trunk = await asyncio.shield(dialing)
                if isinstance(trunk, (OSError, TimeoutError)):
                    raise trunk
                if isinstance(trunk, OpeningTrunk) and trunk.usable:
                    return trunk
        if not live:
            self.fallbacks += 1
            return None
        return min(live, key=lambda t: len(t.channels))

    async def _dial(self, base_url: str) -> OpeningTrunk | Exception:
        """A new trunk, or why there is none (a refusal: `InvalidHandshake`)."""
        url = f"{base_url}{TRUNK_PATH}?from={quote(self._name)}"
        try:
            conn = await connect(
                url,
                ssl=self._ssl if base_url.startswith("wss://") else None,
                additional_headers={"Authorization": f"Bearer {self._token}"},
                compression=None,
                open_timeout=self._open_timeout,
                ping_interval=None,  # the trunk pings itself (PING records)
                proxy=None,
                user_agent_header=None,
                create_connection=TrunkHandshake,
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.dial_failures += 1
            self._down_until[base_url] = time.monotonic() + RETRY_S
            log.warning("no trunk to %s (%s): its clients are dialled directly", base_url, exc)
            return exc
        assert isinstance(conn, TrunkHandshake)
        trunk = OpeningTrunk(self.stats, f"{self._name}->{base_url}", self._lost)
        trunk.url = base_url
        conn.detach(trunk)
        if trunk.gone or self._closed:
            trunk.close("lb stopping")
            return ConnectionResetError(f"trunk to {base_url} closed at once")
        self._trunks.setdefault(base_url, []).append(trunk)
        log.info("trunk to %s open (%d of %d)", base_url, len(self._trunks[base_url]),
                 self.per_sidecar)  # fmt: skip
        return trunk

    def _lost(self, trunk: OpeningTrunk) -> None:
        trunks = self._trunks.get(trunk.url, [])
        if trunk in trunks:
            trunks.remove(trunk)
        if not trunks:
            self._trunks.pop(trunk.url, None)
        if not self._closed and not trunk.retiring:
            log.warning("trunk %s lost (%s)", trunk.name, trunk.goaway or "connection lost")

    async def open_leg(
        self, trunk: OpeningTrunk, uri: str, headers: dict[str, str], peer: str
    ) -> LBClientConnection:
        """A client's sidecar leg as a channel on `trunk`: the same handshake as over TCP
        (`websockets.asyncio.client.connect` does these steps on a socket)."""
        protocol = ClientProtocol(parse_uri(uri))
        conn = LBClientConnection(protocol, ping_interval=None)
        trunk.open_channel(conn, peer)
        try:
            async with asyncio.timeout(self._open_timeout):
                await conn.handshake(headers, None)
        except BaseException:
            conn.transport.abort()
            raise
        return conn

    def retire(self, urls: set[str]) -> None:
        """The membership changed: trunks to a sidecar that left take no new channels and
        close once their last channel has (the relays on them move or end as today)."""
        for url, trunks in list(self._trunks.items()):
            if url not in urls:
                for trunk in trunks:
                    trunk.retire()

    def close(self) -> None:
        """The LB stops (after its relays): GOAWAY on every trunk."""
        self._closed = True
        for trunks in list(self._trunks.values()):
            for trunk in list(trunks):
                trunk.close("lb stopping")

    def report(self) -> dict[str, Any]:
        """`/connections` → `trunks`."""
        per_sidecar = {url: len(trunks) for url, trunks in sorted(self._trunks.items())}
        return {
            "per_sidecar": self.per_sidecar,
            "up": per_sidecar,
            "fallbacks": self.fallbacks,
            "dial_failures": self.dial_failures,
            **asdict(self.stats),
        }
