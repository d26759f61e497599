"""The LB is transparent when a sidecar fails a connection (RFC 6455 §7.1.7): the
sidecar sends its close frame and closes TCP at once, so the LB closes its sending half
towards the client right after forwarding that frame, like the sidecar would have.

It used to wait for the client's close frame, up to the relay's 4 s deadline, then
abort — and a client whose stream the violation had desynchronised (a bogus length
swallowing its close frame) could never send one the LB would see. Found by
tests/fuzz/test_rfc6455.py (`7.1.7-fail-closes-tcp-lb`, closes too late) and the fuzzer
(LB connections ending in timeouts).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.lb.helpers import fake_relay
from wsop.lb.frames import close_frame


@pytest.mark.asyncio
async def test_a_sidecar_that_failed_the_connection_gets_the_client_a_fin_at_once() -> None:
    relay, client, upstream, _ = fake_relay()
    failed = close_frame(1002, "reserved bits must be 0", mask=False)
    relay.upstream.data_received(failed)
    assert bytes(client.transport.written) == failed and not client.transport.eof_written  # type: ignore[attr-defined]
    upstream.transport.close()  # the sidecar's FIN right after its close frame
    await asyncio.sleep(0)
    assert client.transport.eof_written and not client.transport.closing  # type: ignore[attr-defined]
    relay.client.data_received(close_frame(1002, "", mask=True))  # the client answers late
    assert client.transport.closing
    await asyncio.sleep(0)
    assert relay.over and relay.ending == ("upstream", 1002, "reserved bits must be 0")


@pytest.mark.asyncio
async def test_a_sidecar_closing_normally_still_waits_for_the_client() -> None:
    """A close the sidecar starts itself (1012, 1000 "moved") keeps its socket open for
    the client's answer: nothing changes until the client answers."""
    relay, client, upstream, _ = fake_relay()
    relay.upstream.data_received(close_frame(1012, "service restart", mask=False))
    await asyncio.sleep(0)
    assert not client.transport.eof_written and not client.transport.closing  # type: ignore[attr-defined]
    relay.client.data_received(close_frame(1012, "", mask=True))
    assert client.transport.closing
