"""One HTTP/1.1 request over asyncio, for the LB's forwarding of the backends' APIs to a
sidecar (`wsop.lb.api`): no client library in the server's world for one request shape.

A request is one connection (`Connection: close`, as the servers answer every HTTP
request); the answer is read to its `Content-Length`, or to EOF, up to `MAX_ANSWER_BYTES`.
The two failures are told apart, because they mean different things for a publish:
`NotSent` (the connection could not be made: nothing reached the sidecar, another
may be asked) and `NoAnswer` (sent, but no complete answer: it may have been acted on).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from wsop.errors import WsopError

MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024


class NotSent(WsopError):
    """The connection could not be made: the request never left."""


class NoAnswer(WsopError):
    """The request was sent, but no complete answer came back."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    """Lower-cased names (the last value of a repeated header)."""
    body: bytes


async def request(
    base_url: str,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Answer:
    """`method target` at `base_url` (ws://, wss://, http:// or https://host:port)."""
    url = urlsplit(base_url)
    secure = url.scheme in ("wss", "https")
    host, port = url.hostname or "127.0.0.1", url.port or (443 if secure else 80)
    context = (ssl_context or ssl.create_default_context()) if secure else None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except (OSError, TimeoutError) as exc:
        raise NotSent(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from None
    lines = [f"{method} {target} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    try:
        async with asyncio.timeout(timeout):
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            return _parse(await _read_to_eof(reader))
    except (OSError, TimeoutError, ValueError) as exc:
        raise NoAnswer(f"no answer from {host}:{port}: {exc or type(exc).__name__}") from None
    finally:
        writer.close()


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    data = bytearray()
    while chunk := await reader.read(65536):
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            break
    return bytes(data)


def _parse(data: bytes) -> Answer:
    """An HTTP/1.1 answer read to EOF; ValueError when it is not a whole one."""
    if len(data) > MAX_ANSWER_BYTES:
        raise ValueError(f"answer over {MAX_ANSWER_BYTES} bytes")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("connection closed before a whole answer")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:60]!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or len(body) < int(length):
            raise ValueError("answer body cut short")
        body = body[: int(length)]
    return Answer(int(parts[1]), headers, body)
