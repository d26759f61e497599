"""The raw relay on fake transports: control frames, switching at message boundaries,
splicing two upstreams, closes end to end."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode

from tests.fakes import FakeConn, FakeTransport  # noqa: F401
from tests.lb.helpers import (
    Recorder,
    fake_relay,
    masked,
    plain,
    unmasked_texts,
)
from wsop.lb import Relay
from wsop.lb.frames import close_frame, parse_close


@pytest.mark.asyncio
async def test_relay_takes_control_frames_out_of_the_stream() -> None:
    relay, client, upstream, dialled = fake_relay()
    hello = masked("hello")
    relay.client.data_received(hello)
    assert bytes(upstream.transport.written) == hello  # masked bytes pass through unchanged
    move = plain("\x00wsop:move s1 ws://127.0.0.1:9")
    # one read: a message, an unknown control frame, a message, half of a move frame
    chunk = plain("a") + plain("\x00wsop:nonsense") + plain("b") + move[:5]
    relay.upstream.data_received(chunk)
    assert bytes(client.transport.written) == plain("a") + plain("b")
    relay.upstream.data_received(move[5:] + plain("c"))
    assert bytes(client.transport.written) == plain("a") + plain("b") + plain("c")
    for _ in range(5):
        await asyncio.sleep(0)
    assert dialled == [("ws://127.0.0.1:9", "s0")] and relay.owner == "s1"
    assert relay.stats.upstream_to_client == 3 and relay.stats.client_to_upstream == 1
    new = dialled.conns["ws://127.0.0.1:9"]
    nxt = masked("next")
    relay.client.data_received(nxt)
    assert bytes(new.transport.written) == nxt
    # the old sidecar was told its client moved away (a masked control frame, after hello)
    assert bytes(upstream.transport.written)[: len(hello)] == hello
    assert unmasked_texts(bytes(upstream.transport.written)[len(hello) :]) == ["\x00wsop:moved"]
    # a move frame from the draining old upstream is ignored
    old = next(iter(relay.draining))
    old.data_received(plain("\x00wsop:move s2 ws://127.0.0.1:8"))
    await asyncio.sleep(0)
    assert len(dialled) == 1


@pytest.mark.asyncio
async def test_switch_waits_for_the_client_message_boundary() -> None:
    relay, client, upstream, dialled = fake_relay()
    big = Frame(Opcode.BINARY, b"x" * 1000).serialize(mask=True, extensions=[])
    relay.client.data_received(big[:300])  # half a message is on its way to s0
    switch = asyncio.ensure_future(relay.switch_to("s1", "ws://s1"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not switch.done() and relay.owner == "s0"  # dialled, waiting for the boundary
    after = masked("after")
    relay.client.data_received(big[300:] + after)
    await switch
    new = dialled.conns["ws://s1"]
    written = bytes(upstream.transport.written)
    assert written[: len(big)] == big  # the whole message went to s0, then the news
    assert unmasked_texts(written[len(big) :]) == ["\x00wsop:moved"]
    assert bytes(new.transport.written) == after and relay.owner == "s1"
    # the old upstream drains; if its sidecar does not close it, the LB does after drain_s:
    # 1000 "moved" (masked: we are its client)
    await asyncio.sleep(0.25)
    old_side = next(iter(relay.draining))
    frame = bytes(upstream.transport.written[len(written) :])
    scanner = Recorder(intercept=False)
    scanner.feed(frame)
    assert [parse_close(p) for p in scanner.closes] == [(1000, "moved")] and frame[1] & 0x80
    old_side.data_received(close_frame(1000, "moved", mask=False))  # its answer: not forwarded
    assert b"moved" not in client.transport.written


@pytest.mark.asyncio
async def test_two_upstreams_splice_only_between_messages() -> None:
    relay, client, upstream, _ = fake_relay()
    await relay.switch_to("s1", "ws://s1")
    old, new = next(iter(relay.draining)), relay.upstream
    long = Frame(Opcode.TEXT, b"o" * 500).serialize(mask=False, extensions=[])
    old.data_received(long[:100])  # the old sidecar is mid-message
    new.data_received(plain("n1") + plain("n2"))  # must wait: not inside the old message
    assert bytes(client.transport.written) == long[:100]
    old.data_received(long[100:] + plain("o2"))
    assert bytes(client.transport.written) == long + plain("o2") + plain("n1") + plain("n2")
    assert relay.writer is None and relay.stats.upstream_to_client == 4


@pytest.mark.asyncio
async def test_close_frames_pass_end_to_end_and_vanished_sidecar_is_1012() -> None:
    done: list[Relay] = []
    relay, client, upstream, _ = fake_relay(on_done=done.append)
    relay.upstream.data_received(close_frame(4001, "bye", mask=False))
    assert bytes(client.transport.written) == close_frame(4001, "bye", mask=False)
    reply = close_frame(4001, "bye", mask=True)
    relay.client.data_received(reply)  # the client's answer goes to the sidecar
    assert bytes(upstream.transport.written) == reply
    assert client.transport.closing  # handshake done both ways: the LB closes the client
    upstream.transport.close()  # the sidecar closes its socket
    await asyncio.sleep(0)
    assert done == [relay] and relay.ending == ("upstream", 4001, "bye")

    relay, client, upstream, _ = fake_relay()
    relay.client.data_received(masked("x"))
    upstream.transport.close()  # no close frame: the sidecar vanished
    await asyncio.sleep(0)
    assert bytes(client.transport.written) == close_frame(1012, "sidecar went away", mask=False)
    assert relay.stats.upstream_failures["vanished"] == 1
    relay.client.data_received(close_frame(1012, "", mask=True))
    assert client.transport.closing

    relay, client, upstream, _ = fake_relay()
    client.transport.close()  # the client vanished: the sidecar gets 1000 from the LB
    await asyncio.sleep(0)
    scanner = Recorder(intercept=False)
    scanner.feed(bytes(upstream.transport.written))
    assert [parse_close(p) for p in scanner.closes] == [(1000, "")]
