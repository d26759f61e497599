"""The accepting end of a trunk (the sidecar): every channel the LB opens becomes a
websockets server connection, as if a client had connected over TCP.

`AcceptingTrunk` answers OPEN by making a protocol with `protocol_factory` and calling
its `connection_made` with the channel. For a websockets server that factory is
`connection_factory(server, …)`: the same `ServerProtocol` and connection class, with the
same settings, that `websockets.asyncio.server.serve` builds for a socket — so its
`connection_made` starts the server's handshake handler (process_request, auth, quotas,
the 101), and whatever the handler does with a TCP connection next (the sidecar detaches
it into a `ClientSession`) it does with the channel. The settings must be those given to
`serve`: pass both the same dict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.server import ServerProtocol

from wsop.trunk.codec import RESET, record
from wsop.trunk.mux import IDLE_LIMIT_S, PING_INTERVAL_S, Trunk, TrunkStats

log = logging.getLogger("wsop.trunk")

ProtocolFactory = Callable[[], asyncio.Protocol]


class AcceptingTrunk(Trunk):
    """A trunk whose peer opens the channels; each gets a protocol from the factory."""

    def __init__(
        self,
        stats: TrunkStats,
        name: str,
        protocol_factory: ProtocolFactory,
        accepting: Callable[[], bool] = lambda: True,
        on_lost: Callable[[AcceptingTrunk], None] | None = None,
    ) -> None:
        super().__init__(stats, name)
        self._factory = protocol_factory
        self._accepting = accepting
        self._on_lost = on_lost
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._idle_timer = self.loop.call_later(PING_INTERVAL_S, self._check_idle)

    def _check_idle(self) -> None:
        """The LB pings every trunk: one silent this long has a dead LB at its end."""
        if self.gone:
            return
        if self.silent_for > IDLE_LIMIT_S:
            silent = self.silent_for
            log.warning("trunk %s: nothing from the LB in %.0f s; dropping it", self.name, silent)
            self.abort()
            return
        self._idle_timer = self.loop.call_later(PING_INTERVAL_S, self._check_idle)

    def on_open(self, channel: int, peer: str) -> None:
        if not self._accepting():  # stopping: like a closed listening socket
            self.max_channel = channel
            self._emit(record(RESET, channel, b"not accepting connections"))
            return
        protocol = self._factory()
        chan = self.add_channel(channel, protocol, peer)
        protocol.connection_made(chan)

    def trunk_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._on_lost is not None:
            self._on_lost(self)


def connection_factory(
    server: Server,
    *,
    create_connection: type[ServerConnection] = ServerConnection,
    origins: Sequence[Any] | None = None,
    select_subprotocol: Callable[[ServerConnection, Sequence[Any]], Any] | None = None,
    max_size: int | None = 2**20,
    compression: str | None = None,
    ping_interval: float | None = 20,
    ping_timeout: float | None = 20,
    close_timeout: float | None = 10,
    max_queue: int | None = 16,
    write_limit: int = 2**15,
) -> Callable[[], ServerConnection]:
    """What `serve(...)` gives `loop.create_server` as its protocol factory, for channels
    (websockets keeps its own inside a closure). Takes the keyword arguments of `serve`
    that shape a connection; handshake callbacks stay with `server`'s handler."""
    if compression is not None:
        raise ValueError("trunk channels relay raw frames: compression must be None")

    def factory() -> ServerConnection:
        chooser = None
        if select_subprotocol is not None:
            pick = select_subprotocol

            def chooser(protocol: ServerProtocol, subprotocols: Sequence[Any]) -> Any:
                return pick(connection, subprotocols)

        protocol = ServerProtocol(
            origins=origins,
            select_subprotocol=chooser,
            max_size=max_size,
            logger=server.logger,
        )
        connection = create_connection(
            protocol,
            server,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            max_queue=max_queue,
            write_limit=write_limit,
        )
        return connection

    return factory
