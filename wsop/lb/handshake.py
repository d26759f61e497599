"""The LB's handshake connections: websockets does both handshakes, then the sockets are
detached (`wsop.detach`) and their frames relayed as raw bytes."""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.protocol import OPEN

from wsop.detach import Detachable
from wsop.httpbody import BodyReading


class LBServerConnection(BodyReading, Detachable, ServerConnection):
    """A client's connection to the LB: relayable once the upgrade request is read.

    (A refused request is answered by websockets as usual: with `_STASHING` nothing is
    parsed after the head, and a GET upgrade request has no body. An API request's
    body is read beside websockets: `wsop.httpbody`.)"""

    def _relayable(self) -> bool:
        return self.request is not None


class LBClientConnection(Detachable, ClientConnection):
    """The LB's connection to a sidecar: relayable once a 101 response is read (a refusal
    has a body, which websockets must still read for `InvalidStatus`)."""

    def _relayable(self) -> bool:
        return self.protocol.state is OPEN
