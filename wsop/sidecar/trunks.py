"""The sidecar's end of the LB's trunks: `/trunk` (admin token), then records.

An LB started with `--trunks N` opens N trunks to each sidecar and carries all its
clients over them (`wsop.trunk`). Here each trunk is an `AcceptingTrunk` whose channels
are handed to the *same* websockets server connection a TCP client gets (made by
`connection_factory` with the options `serve` got), so a channel runs the unchanged
handshake (`process_request`: the client's token, the LB's signed word, quotas) and then
becomes an ordinary `ClientSession`. What differs is below the session: its writes are
gathered by the trunk and sent once per loop pass for every client on that trunk.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from websockets.asyncio.server import Server

from wsop.sidecar.client import SidecarServerConnection
from wsop.trunk.mux import TrunkStats
from wsop.trunk.serving import AcceptingTrunk, ProtocolFactory, connection_factory

log = logging.getLogger("wsop.sidecar")


class SidecarTrunks:
    """The trunks LBs opened to this sidecar, and their counters."""

    def __init__(self) -> None:
        self.stats = TrunkStats()
        self.trunks: set[AcceptingTrunk] = set()
        self.accepting = True
        """False once the sidecar stops: new channels are refused (RESET), like TCP clients
        by a closed listening socket."""
        self._factory: ProtocolFactory | None = None

    def bind(self, server: Server, **options: Any) -> None:
        """Channels become connections of `server`, with the options `serve` was given."""
        self._factory = connection_factory(
            server, create_connection=SidecarServerConnection, **options
        )

    def take(self, conn: SidecarServerConnection, lb: str) -> None:
        """The `/trunk` handshake succeeded: the socket carries records from now on."""
        assert self._factory is not None, "bind() before serving trunks"
        trunk = AcceptingTrunk(
            self.stats, lb, self._factory, lambda: self.accepting, self.trunks.discard
        )
        self.trunks.add(trunk)
        log.info("trunk from LB %s opened (%d trunks)", lb, len(self.trunks))
        conn.detach(trunk)

    def close(self) -> None:
        """Shutdown: GOAWAY on every trunk (its remaining channels end with it)."""
        self.accepting = False
        for trunk in list(self.trunks):
            trunk.close("sidecar stopping")

    def report(self) -> dict[str, int]:
        """The counters (`/connections` → `trunks`)."""
        return asdict(self.stats)
