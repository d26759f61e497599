"""Channels on a trunk, both ends in memory: streams, closes, credit, isolation, refusals."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.trunk.pipe import Pipe, Recorder
from wsop.trunk import codec
from wsop.trunk.codec import DATA, GOAWAY, OPEN, RESET, WINDOW, TrunkDecoder


def opened(pipe: Pipe, n: int = 1) -> list[tuple[Recorder, Recorder]]:
    """n channels opened by the LB end: (LB-side protocol, sidecar-side protocol)."""
    out = []
    for i in range(n):
        rec = Recorder()
        pipe.lb.open_channel(rec, f"10.0.0.{i}:5{i:03d}")
        out.append(rec)
    return out


@pytest.mark.asyncio
async def test_bytes_flow_both_ways_and_the_peer_address_arrives() -> None:
    pipe = Pipe()
    (lb,) = opened(pipe)
    lb.transport.write(b"GET / HTTP/1.1\r\n")
    await pipe.turn()
    (sc,) = pipe.accepted
    assert bytes(sc.data) == b"GET / HTTP/1.1\r\n"
    assert sc.transport.get_extra_info("peername") == ("10.0.0.0", 5000)
    sc.transport.write(b"HTTP/1.1 101\r\n")
    sc.transport.write(b"more")
    await pipe.turn()
    assert bytes(lb.data) == b"HTTP/1.1 101\r\nmore"


@pytest.mark.asyncio
async def test_close_is_a_fin_each_way_and_both_ends_learn_it() -> None:
    pipe = Pipe()
    (lb,) = opened(pipe)
    lb.transport.write(b"bye")
    lb.transport.close()
    assert lb.transport.is_closing()
    await pipe.turn()
    (sc,) = pipe.accepted
    assert bytes(sc.data) == b"bye" and sc.eof  # data first, then the EOF
    assert lb.lost == [None] and sc.lost == [None]
    assert not pipe.lb.channels and not pipe.sidecar.channels


@pytest.mark.asyncio
async def test_write_eof_half_closes_and_the_other_half_still_flows() -> None:
    pipe = Pipe()
    (lb,) = opened(pipe)
    lb.keep_open_on_eof = True
    await pipe.turn()
    (sc,) = pipe.accepted
    sc.transport.write(b"close frame")
    sc.transport.write_eof()
    with pytest.raises(RuntimeError):
        sc.transport.write(b"x")
    await pipe.turn()
    assert lb.eof and bytes(lb.data) == b"close frame" and not lb.lost
    lb.transport.write(b"client's close frame")
    lb.transport.close()
    await pipe.turn()
    assert bytes(sc.data) == b"client's close frame" and sc.eof
    assert sc.lost == [None] and lb.lost == [None]


@pytest.mark.asyncio
async def test_abort_sends_what_was_written_then_resets() -> None:
    pipe = Pipe()
    (lb,) = opened(pipe)
    await pipe.turn()
    (sc,) = pipe.accepted
    sc.transport.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    sc.transport.abort()  # what websockets does right after a refusal
    await pipe.turn()
    assert bytes(lb.data) == b"HTTP/1.1 403 Forbidden\r\n\r\n"
    assert len(lb.lost) == 1 and isinstance(lb.lost[0], ConnectionResetError)
    assert sc.lost == [None]


@pytest.mark.asyncio
async def test_fifty_channels_written_in_one_pass_are_one_socket_write() -> None:
    pipe = Pipe()
    lbs = opened(pipe, 50)
    await pipe.turn()
    writes = pipe.sidecar_wire.writes
    for sc in pipe.accepted:
        sc.transport.write(b"team message")
    await asyncio.sleep(0)
    assert pipe.sidecar_wire.writes == writes + 1
    reads = pipe.stats.reads
    await pipe.turn()
    assert pipe.stats.reads == reads + 1
    assert all(bytes(lb.data) == b"team message" for lb in lbs)


@pytest.mark.asyncio
async def test_a_reader_that_stops_reading_stalls_its_own_channel_only() -> None:
    pipe = Pipe()
    slow, fast = opened(pipe, 2)
    await pipe.turn()
    slow_sc, fast_sc = pipe.accepted
    slow.transport.pause_reading()  # the LB stopped reading: its client is not reading
    big = bytes(range(256)) * 4096  # 1 MiB
    slow_sc.transport.write(big)
    assert slow_sc.write_paused  # past its high-water mark at once
    fast_sc.transport.write(b"still flowing")
    for _ in range(5):
        await pipe.turn()
    assert bytes(fast.data) == b"still flowing"
    assert slow.data == b""  # held at the LB end, unread
    assert slow_sc.transport.get_write_buffer_size() == len(big) - WINDOW
    assert pipe.stats.credit_stalls >= 1
    slow.transport.resume_reading()
    for _ in range(20):
        await pipe.turn()
    assert bytes(slow.data) == big
    assert not slow_sc.write_paused and slow_sc.transport.get_write_buffer_size() == 0


@pytest.mark.asyncio
async def test_eof_waits_behind_bytes_held_while_reading_is_paused() -> None:
    pipe = Pipe()
    (lb,) = opened(pipe)
    await pipe.turn()
    (sc,) = pipe.accepted
    lb.transport.pause_reading()
    sc.transport.write(b"last words")
    sc.transport.close()
    await pipe.turn()
    assert lb.data == b"" and not lb.eof
    lb.transport.resume_reading()
    assert lb.data == b""  # not inside resume_reading: in this pass, as a socket's read
    await asyncio.sleep(0)
    assert bytes(lb.data) == b"last words" and lb.eof
    await pipe.turn()
    assert lb.lost == [None]


@pytest.mark.asyncio
async def test_bytes_held_while_paused_come_before_later_ones_and_after_the_resumer() -> None:
    """`Detachable.attach` resumes reading before it replays its stash: the held bytes
    must not overtake the stash (a 1002 through the LB, once in 20 oversize frames)."""
    pipe = Pipe()
    (lb,) = opened(pipe)
    await pipe.turn()
    (sc,) = pipe.accepted
    lb.transport.pause_reading()
    sc.transport.write(b"held ")
    await pipe.turn()
    lb.transport.resume_reading()
    lb.data_received(b"stash ")  # what the resumer hands on right after
    sc.transport.write(b"later")  # and what arrives before the backlog was read
    await pipe.turn()
    assert bytes(lb.data) == b"stash held later"


@pytest.mark.asyncio
async def test_a_protocol_that_raises_ends_its_channel_not_the_trunk() -> None:
    pipe = Pipe()
    bad, good = opened(pipe, 2)

    def boom(data: bytes) -> None:
        raise ValueError("bug")

    bad.data_received = boom  # type: ignore[method-assign]
    await pipe.turn()
    for sc in pipe.accepted:
        sc.transport.write(b"hello")
    await pipe.turn()
    assert bytes(good.data) == b"hello" and not pipe.lb.closed
    assert bad.lost == [None]  # aborted: the sidecar end was reset
    assert isinstance(pipe.accepted[0].lost[0], ConnectionResetError)


@pytest.mark.asyncio
async def test_a_stopping_sidecar_resets_new_channels() -> None:
    pipe = Pipe(accepting=False)
    (lb,) = opened(pipe)
    await pipe.turn()
    assert not pipe.accepted and isinstance(lb.lost[0], ConnectionResetError)
    assert "not accepting" in str(lb.lost[0])


@pytest.mark.asyncio
async def test_losing_the_trunk_ends_every_channel_with_an_error() -> None:
    pipe = Pipe()
    lbs = opened(pipe, 3)
    await pipe.turn()
    pipe.lb.connection_lost(ConnectionResetError("peer vanished"))
    await asyncio.sleep(0)
    assert all(len(r.lost) == 1 and isinstance(r.lost[0], ConnectionResetError) for r in lbs)
    with pytest.raises(ConnectionResetError):
        pipe.lb.open_channel(Recorder())


@pytest.mark.asyncio
async def test_a_ping_is_answered() -> None:
    pipe = Pipe()
    pongs = []
    pipe.lb.pong = lambda: pongs.append(1)  # type: ignore[method-assign]
    pipe.lb._emit(codec.record(codec.PING, 0, b"12345678"))
    await pipe.turn()
    assert pongs == [1]


@pytest.mark.asyncio
async def test_records_for_a_channel_that_is_gone_are_late_not_wrong() -> None:
    pipe = Pipe()
    (lb,) = opened(pipe)
    await pipe.turn()
    (sc,) = pipe.accepted
    lb.transport.abort()  # the LB forgets the channel at once
    sc.transport.write(b"crossing the RESET")
    await pipe.turn()
    assert not pipe.lb.closed and pipe.stats.late_records >= 1


# --- what a broken or hostile peer can send -------------------------------------------


def goaway_reason(data: bytes) -> str:
    recs = [r for r in TrunkDecoder().feed(data) if r[0] == GOAWAY]
    assert recs, "no GOAWAY was sent"
    return recs[-1][2].decode()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (codec.record(DATA, 9, b"x"), "channel 9, which was never opened"),
        (codec.record(OPEN, 5), "OPEN of channel 5 from the accepting side"),
        (codec.header(DATA, 1, WINDOW) + b"x" * WINDOW + codec.record(DATA, 1, b"y"), "beyond"),
        (codec.credit(1, 1), "CREDIT beyond the window"),
        (codec.header(77, 1, 0), "unknown trunk record type 77"),
    ],
)
@pytest.mark.asyncio
async def test_a_sidecar_breaking_the_protocol_gets_its_trunk_closed(raw: bytes, why: str) -> None:
    pipe = Pipe()
    victim, bystander = opened(pipe, 2)
    victim.transport.pause_reading()  # (else it grants credit as it reads)
    await pipe.turn()
    pipe.lb.data_received(raw + codec.record(DATA, 2, b"never delivered"))
    await asyncio.sleep(0)
    assert why in goaway_reason(pipe.lb_wire.take())
    assert pipe.lb_wire.closed and pipe.stats.errors == 1
    await asyncio.sleep(0)
    assert bystander.data == b"" and victim.data == b""
    assert all(isinstance(r.lost[0], ConnectionResetError) for r in (victim, bystander))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (codec.record(OPEN, 1), "OPEN of channel 1: ids only grow"),
        (codec.record(codec.CLOSE, 1) + codec.record(codec.CLOSE, 1), "a second CLOSE"),
        (codec.record(codec.CLOSE, 1) + codec.record(DATA, 1, b"x"), "DATA after CLOSE"),
        (codec.record(RESET, 3), "channel 3, which was never opened"),
    ],
)
@pytest.mark.asyncio
async def test_an_lb_breaking_the_protocol_gets_its_trunk_closed(raw: bytes, why: str) -> None:
    pipe = Pipe()
    opened(pipe, 1)[0].keep_open_on_eof = True
    await pipe.turn()
    pipe.accepted[0].keep_open_on_eof = True
    pipe.sidecar.data_received(raw)
    await asyncio.sleep(0)
    assert why in goaway_reason(pipe.sidecar_wire.take())
    assert pipe.sidecar_wire.closed


# --- credit, as a property ----------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 3), st.booleans(), st.integers(1, 150_000)),
        st.tuples(st.just("pause"), st.integers(0, 3), st.booleans(), st.just(0)),
        st.tuples(st.just("resume"), st.integers(0, 3), st.booleans(), st.just(0)),
        st.tuples(st.just("turn"), st.just(0), st.booleans(), st.integers(0, 5000)),
    ),
    max_size=40,
)


def check_credit(pipe: Pipe) -> None:
    for trunk in (pipe.lb, pipe.sidecar):
        for chan in trunk.channels.values():
            assert 0 <= chan._credit <= WINDOW, chan._credit
            assert 0 <= chan._window <= WINDOW, chan._window


async def run_ops(steps) -> None:
    pipe = Pipe()
    lbs = opened(pipe, 4)
    await pipe.turn()
    scs = pipe.accepted
    sent: dict[tuple[int, bool], bytearray] = {
        (i, s): bytearray() for i in range(4) for s in (0, 1)
    }
    for op, i, from_sidecar, n in steps:
        writer, reader = (scs[i], lbs[i]) if from_sidecar else (lbs[i], scs[i])
        if op == "write":
            chunk = bytes([n % 251]) * n
            writer.transport.write(chunk)
            sent[(i, from_sidecar)] += chunk
        elif op == "pause":
            reader.transport.pause_reading()
        elif op == "resume":
            reader.transport.resume_reading()
        else:
            await pipe.turn([n, 2 * n + 1])
        check_credit(pipe)
        # a stalled channel never holds up another: every reader that reads has all
        # that its writer's credit let through
        for j in range(4):
            for s in (False, True):
                w, r = (scs[j], lbs[j]) if s else (lbs[j], scs[j])
                assert bytes(r.data) == bytes(sent[(j, s)][: len(r.data)])
    for rec in (*lbs, *scs):
        rec.transport.resume_reading()
    for _ in range(40):
        await pipe.turn()
        check_credit(pipe)
    for j in range(4):
        assert bytes(scs[j].data) == bytes(sent[(j, False)])
        assert bytes(lbs[j].data) == bytes(sent[(j, True)])
        assert scs[j].transport.get_write_buffer_size() == 0 and not scs[j].write_paused


@given(ops)
@settings(max_examples=60, deadline=None)
def test_credit_never_goes_negative_and_every_byte_arrives(steps) -> None:
    asyncio.run(run_ops(steps))
