"""Requests with a body on a WebSocket port (`POST /publish`), read beside websockets.

websockets parses HTTP heads for WebSocket handshakes only: it refuses any request that
declares a body ("unsupported request body", a plain-text 400) before `process_request`
runs. The HTTP APIs need one, so `BodyReading` — a mixin ahead of websockets' server
connection, and of `wsop.detach.Detachable` — looks at the first bytes of every
connection:

- a `GET` (every WebSocket handshake, every admin endpoint) passes through untouched,
  byte for byte, from the fourth byte on: the handshake path pays one prefix check;
- any other method's head is held until it is complete; its `Content-Length` and
  `Transfer-Encoding` lines are taken out and remembered, and websockets gets the rest
  as a body-less request: `process_request` runs as for any request (same checks, same
  responses), sees `request.method`, and awaits `read_body(limit)` for the body.

Everything is bounded: a head over `MAX_HEAD_BYTES` goes to websockets as it is (which
refuses it); a body is read only up to the limit the endpoint passes to `read_body`
(a larger `Content-Length` is refused with 413 and not read); bytes that arrive before
the endpoint asks are held up to `PREFETCH_BYTES`, then the socket is not read until it
does; a chunked body (`Transfer-Encoding`) is refused with 411; the whole exchange is
bounded by the server's `open_timeout`, like a handshake. One request per connection:
the answer closes it (`Connection: close`), as websockets answers every HTTP request.
"""

from __future__ import annotations

import asyncio
from typing import Final

MAX_HEAD_BYTES: Final = 16 * 1024
PREFETCH_BYTES: Final = 64 * 1024
_DECIDING: Final = 0  # the first bytes: a GET or not?
_PASSING: Final = 1  # websockets gets every byte (a GET, or a head we leave to it)
_HEAD: Final = 2  # holding a non-GET head until its blank line
_BODY: Final = 3  # collecting the body
_DONE: Final = 4  # body complete or refused: further bytes are dropped
_GET: Final = b"GET "


class BodyError(Exception):
    """The body cannot be had: `status` (400, 411, 413) and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def strip_body_headers(head: bytes) -> tuple[bytes, int, str | None, bool]:
    """(the head without its body headers, Content-Length, why no body can be read or
    None, whether the client waits for `100 Continue`). Pure, for the tests too."""
    lines = head.split(b"\r\n")
    kept: list[bytes] = []
    lengths: set[bytes] = set()
    problem: str | None = None
    expect = False
    for i, line in enumerate(lines):
        name, colon, value = line.partition(b":")
        key = name.strip().lower() if i and colon else b""
        if key == b"content-length":
            lengths.add(value.strip())
        elif key == b"transfer-encoding":
            problem = "chunked bodies are not accepted: send Content-Length"
        else:
            if key == b"expect" and value.strip().lower() == b"100-continue":
                expect = True
            kept.append(line)
    length = 0
    if problem is None and lengths:
        value = lengths.pop() if len(lengths) == 1 else b""
        if not value.isdigit() or len(value) > 18:
            problem = "Content-Length must be one non-negative integer"
        else:
            length = int(value)
    return b"\r\n".join(kept), length, problem, expect


class BodyReading:
    """Mixin for a websockets `ServerConnection` (an asyncio protocol): see the module."""

    _body_state = _DECIDING
    _held: bytearray | None = None
    _body: bytearray | None = None
    _body_waiter: asyncio.Future[None] | None = None
    _body_paused = False
    _body_wanted = False
    _body_ended = False
    _expect_continue = False
    body_length = 0
    """The request's Content-Length (0: none)."""
    body_problem: str | None = None
    """Why the body cannot be read (a chunked body, a bad Content-Length), or None."""

    def data_received(self, data: bytes) -> None:
        state = self._body_state
        if state == _PASSING:
            super().data_received(data)  # type: ignore[misc]
            return
        if state == _BODY:
            self._collect(data)
            return
        if state == _DONE:
            return
        held = self._held = (self._held or bytearray()) + data
        if state == _DECIDING:
            if held[:4] == _GET:
                self._pass_held()
                return
            if len(held) < 4 and _GET.startswith(bytes(held)):
                return  # not enough bytes to tell yet
            self._body_state = _HEAD
        end = held.find(b"\r\n\r\n")
        if end < 0:
            if len(held) > MAX_HEAD_BYTES:
                self._pass_held()  # websockets refuses it (line too long, too many headers)
            return
        head, rest = bytes(held[: end + 4]), bytes(held[end + 4 :])
        self._held = None
        stripped, self.body_length, self.body_problem, self._expect_continue = strip_body_headers(
            head
        )
        has_body = self.body_problem is None and self.body_length > 0
        self._body_state = _BODY if has_body else _DONE
        self._body = bytearray()
        super().data_received(stripped)  # type: ignore[misc]
        if has_body and rest:
            self._collect(rest)

    def _pass_held(self) -> None:
        held, self._held = self._held, None
        self._body_state = _PASSING
        super().data_received(bytes(held or b""))  # type: ignore[misc]

    def _collect(self, data: bytes) -> None:
        body = self._body
        assert body is not None
        body += data[: self.body_length - len(body)]  # (a pipelined request is dropped)
        if len(body) >= self.body_length:
            self._body_state = _DONE
            self._wake()
        elif not self._body_wanted and len(body) >= PREFETCH_BYTES and not self._body_paused:
            self._body_paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume(self) -> None:
        if self._body_paused:
            self._body_paused = False
            if not self._body_ended:
                self.transport.resume_reading()  # type: ignore[attr-defined]

    async def read_body(self, limit: int) -> bytes:
        """The request's body, once it has all arrived; BodyError when it cannot be had
        (411 chunked, 400 a bad Content-Length or a body cut short, 413 over `limit`:
        then it is not read at all, only drained)."""
        if self.body_problem is not None:
            status = 411 if self.body_problem.startswith("chunked") else 400
            raise BodyError(status, self.body_problem)
        if self.body_length > limit:
            self._body_state, self._body = _DONE, None
            self._resume()
            raise BodyError(413, f"body of {self.body_length} bytes; the limit is {limit}")
        body = self._body if self._body is not None else bytearray()
        self._body_wanted = True
        if len(body) < self.body_length and self._expect_continue and not self._body_ended:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[attr-defined]
        self._resume()
        while len(body) < self.body_length:
            if self._body_ended:
                got = len(body)
                raise BodyError(400, f"the body ended after {got} of {self.body_length} bytes")
            self._body_waiter = asyncio.get_running_loop().create_future()
            await self._body_waiter
        return bytes(body)

    def eof_received(self) -> bool | None:
        held = self._body_state in (_BODY, _DONE)  # a request with a body: ours
        self._end_body()
        if held and self.transport.get_extra_info("sslcontext") is None:  # type: ignore[attr-defined]
            # Its client stopped sending but may still read. Not told to websockets (its
            # connection closes the transport on EOF, before the answer: a body cut short
            # got no 400, a whole one no answer at all); the answer ends the connection
            # as every HTTP answer does. (TLS has no half-open connections: asyncio
            # closes it whatever is returned.)
            return True
        return super().eof_received()  # type: ignore[misc,no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_body()
        super().connection_lost(exc)  # type: ignore[misc]

    def _end_body(self) -> None:
        if self._body_state == _BODY:
            self._body_state = _DONE
        self._body_ended = True
        self._wake()
