"""An invalid HTTP request gets a 400 answer, not a silent close.

websockets' server drops a request it cannot parse (a malformed request line, a header
line without a colon, bare LF line ends) by closing the connection without a word. RFC
9112 §3 says a server SHOULD answer an invalid request line with 400, and an operator
pointing curl or a misconfigured proxy at the LB or a sidecar deserves to see why it
was refused. The parser is websockets' own and still decides what is invalid; only the
silent close becomes a 400 and then the close. A peer that already closed its side
(a port check that connects and leaves) is not written to.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from websockets.exceptions import InvalidMessage
from websockets.protocol import CONNECTING
from websockets.server import ServerProtocol

BAD_REQUEST_BODY = "Failed to open a WebSocket connection: did not receive a valid HTTP request.\n"


class BadRequestAnswering(ServerProtocol):
    """websockets' server protocol, answering an unparsable request with 400."""

    _answered_bad_request = False

    def send_eof(self) -> None:
        # websockets' parser calls this right after failing on a request it cannot read
        if (
            self.state is CONNECTING
            and not self._answered_bad_request
            and isinstance(self.handshake_exc, InvalidMessage)
            and not self.reader.eof
        ):
            self._answered_bad_request = True
            # (send_response sends the EOF itself: it comes back here, answered)
            self.send_response(self.reject(HTTPStatus.BAD_REQUEST, BAD_REQUEST_BODY))
            return
        super().send_eof()


class AnswersBadRequests:
    """Mixin for a websockets `ServerConnection`: its protocol is `BadRequestAnswering`.

    `serve` builds a plain `ServerProtocol` and hands it to the connection class; the
    protocol's class is switched here, before any byte is read (same layout: a
    subclass that adds only a class attribute)."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        if type(protocol) is ServerProtocol:
            protocol.__class__ = BadRequestAnswering
        super().__init__(protocol, *args, **kwargs)  # type: ignore[call-arg]
