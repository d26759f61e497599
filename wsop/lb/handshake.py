"""The LB's handshake connections: websockets does both handshakes, then the sockets are
detached (`wsop.detach`) and their frames relayed as raw bytes."""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.protocol import OPEN

from wsop.badrequest import AnswersBadRequests
from wsop.detach import Detachable
from wsop.httpbody import BodyReading


class LBServerConnection(AnswersBadRequests, BodyReading, Detachable, ServerConnection):
    """A client's connection to the LB: relayable once the upgrade request is read.

    (A refused request is answered by websockets as usual: with `_STASHING` nothing is
    parsed after the head, and a GET upgrade request has no body. An API request's
    body is read beside websockets: `wsop.httpbody`.)"""

    on_lost: Callable[[LBServerConnection], None] | None = None
    """Told when the client goes away, whatever the phase: the LB closes a sidecar leg
    that was dialled for it but never handed to a relay (the client reset its socket
    while its 101 was being sent, so websockets never ran the handler)."""

    def _relayable(self) -> bool:
        return self.request is not None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(self)


class LBClientConnection(Detachable, ClientConnection):
    """The LB's connection to a sidecar: relayable once a 101 response is read (a refusal
    has a body, which websockets must still read for `InvalidStatus`)."""

    def _relayable(self) -> bool:
        return self.protocol.state is OPEN
