"""RFC 6455 conformance: every rule of tests/fuzz/rfc6455_rules.py against three servers —
websockets' own asyncio server (an echo server here: the reference), a real `wsop
sidecar` directly, and a real `wsop lb` in front of sidecars.

The probe (`wsop.fuzz.raw.probe`) is a raw socket: it does the upgrade, sends the
rule's bytes exactly, and reads every frame back (answering the server's close frame as
a client must). Compared per rule and server: the close code, whether the connection
survived, how many frames answered the data, the pongs' payloads, the echoed close
payload, and that the server closed TCP cleanly (FIN, not RST; §7.1.1, §7.1.7) and never
masked a frame (§5.1).

Where the servers differ by design, the rule says so:
- *Payloads.* websockets' server echoes each message; wsop answers each with one JSON
  error frame (the probes' messages are not JSON). Only the count is compared.
- *When UTF-8 is checked.* websockets' asyncio server decodes a text message when its
  handler reads it, so a close frame sent right behind it would end the connection
  before the check; the probe therefore waits for the answers before its closing frames.
- *The LB validates nothing.* It relays raw frames; every violation below is refused by
  the sidecar behind it, and its close frame reaches the client through the LB.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.fuzz.rfc6455_rules import MAX_FRAME, RULES, Rule
from wsop.fuzz.raw import ALIVE_PING, probe
from wsop.fuzz.stack import FuzzStack, seed_tenants
from wsop.local.redis_binary import free_port

TARGETS = ("websockets", "sidecar", "lb")
PROMPT_S = 1.5
"""Every probe ends well within this (the slowest waits 0.15 s for answers that do not
come); a server that waits for a close timeout (2-4 s) instead is caught."""


@pytest.fixture(scope="module")
def reference() -> Iterator[int]:
    """websockets' asyncio server, echoing, with the sidecars' frame limit."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Future[None] = loop.create_future()

    async def echo(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass

    async def main() -> None:
        async with serve(echo, "127.0.0.1", port, max_size=MAX_FRAME, compression=None):
            ready.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port
    loop.call_soon_threadsafe(stop.set_result, None)
    thread.join(10)
    loop.close()


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    seed_tenants(redis_server, {"rfc": {"eng": {1, 2}}})
    stack = FuzzStack(redis_server, tmp_path_factory.mktemp("rfc6455")).start(sidecars=2)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def targets(reference: int, stack: FuzzStack) -> dict[str, tuple[int, str]]:
    assert stack.lb is not None
    path = "/ws?tenant=rfc&user=1"
    return {
        "websockets": (reference, "/"),
        "sidecar": (stack.sidecars[0].port, path),
        "lb": (stack.lb.port, path),
    }


def cases() -> list[object]:
    """One test per rule and server; a known bug of the reference is a strict xfail (it
    turns into a failure the day websockets fixes it)."""
    out = []
    for rule in RULES:
        for target in TARGETS:
            marks = []
            if target == "websockets" and rule.reference_bug:
                marks.append(pytest.mark.xfail(strict=True, reason=rule.reference_bug))
            out.append(pytest.param(rule, target, marks=marks, id=f"{rule.id}-{target}"))
    return out


@pytest.mark.parametrize(("rule", "target"), cases())
def test_rule(rule: Rule, target: str, targets: dict[str, tuple[int, str]]) -> None:
    port, path = targets[target]
    out = probe("127.0.0.1", port, path, rule.data, replies=rule.replies, **rule.probe)  # type: ignore[arg-type]
    assert out.status == 101
    seen = f"{rule.says}; saw {[(f.opcode, f.payload[:20]) for f in out.frames]} {out.ended}"
    assert out.close_code == rule.close, seen
    pongs = list(out.pongs)
    assert (ALIVE_PING in pongs) == rule.survives, seen
    if rule.survives:
        pongs.remove(ALIVE_PING)
    assert pongs == list(rule.pongs), seen
    if rule.survives:
        assert out.data_frames == rule.replies - len(rule.pongs), seen
    else:  # messages before a violation may or may not be answered before the close
        assert out.data_frames <= rule.replies, seen
    if rule.echo is not None:
        assert out.close is not None and out.close.payload == rule.echo, seen
    assert out.ended == "fin", seen  # the server closed TCP, cleanly (§7.1.1, §7.1.7)
    assert out.seconds < PROMPT_S, seen  # ... at once: it did not wait for a timeout
    assert out.masked == 0, seen  # §5.1


MALFORMED_HEADS = {
    "not-http": b"\x00\x01\x02 hello\r\n\r\n",
    "no-version": b"GET /ws\r\n\r\n",
    "header-without-colon": b"GET /ws HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "doubled-spaces": b"GET  /ws  HTTP/1.1\r\nHost: x\r\n\r\n",
    "bare-lf": b"GET /ws HTTP/1.1\nHost: x\n\n",
}


def ask(port: int, data: bytes, half_close: bool = False) -> bytes:
    """Send `data`, read to the server's close (or 3 s): everything it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                out += chunk
        return out


@pytest.mark.parametrize("head", sorted(MALFORMED_HEADS))
@pytest.mark.parametrize("target", ["sidecar", "lb"])
def test_a_malformed_request_head_gets_a_400(
    head: str, target: str, targets: dict[str, tuple[int, str]]
) -> None:
    """RFC 9112 §3: answered with 400 and closed (websockets alone closes silently)."""
    out = ask(targets[target][0], MALFORMED_HEADS[head])
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), out[:80]
    assert out.endswith(b"did not receive a valid HTTP request.\n"), out[-80:]


@pytest.mark.parametrize("target", ["sidecar", "lb"])
def test_a_peer_that_left_is_not_answered(target: str, targets: dict[str, tuple[int, str]]) -> None:
    """A port check that connects and closes (or junk then EOF) gets no 400 written at it."""
    assert ask(targets[target][0], b"", half_close=True) == b""
    assert ask(targets[target][0], b"GET /ws HTTP/1.1\r\nHost", half_close=True) == b""


def test_no_server_crashed_or_logged_a_traceback(stack: FuzzStack) -> None:
    """Runs after the rules (file order): nothing above may have hurt a server."""
    assert stack.crashed() == {}
    assert stack.tracebacks() == {}
