"""The trunk record format: encoding, incremental decoding at any split, and refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsop.trunk import codec
from wsop.trunk.codec import (
    CLOSE,
    CREDIT,
    DATA,
    GOAWAY,
    MAX_DATA,
    OPEN,
    PING,
    PONG,
    RESET,
    TrunkDecoder,
    TrunkFormatError,
)

channels = st.integers(1, 2**32 - 1)
records = st.one_of(
    st.tuples(st.just(OPEN), channels, st.binary(max_size=40)),
    st.tuples(st.just(DATA), channels, st.binary(min_size=1, max_size=300)),
    st.tuples(st.just(CLOSE), channels, st.just(b"")),
    st.tuples(st.just(RESET), channels, st.binary(max_size=20)),
    st.tuples(
        st.just(CREDIT), channels, st.integers(1, 2**32 - 1).map(lambda n: n.to_bytes(4, "big"))
    ),
    st.tuples(st.sampled_from([PING, PONG]), st.just(0), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(GOAWAY), st.just(0), st.binary(max_size=30)),
)


def normalised(recs: list[codec.Record]) -> list[codec.Record]:
    """DATA is a stream: adjacent DATA records of one channel are one piece of it."""
    out: list[codec.Record] = []
    for kind, ch, payload in recs:
        if kind == DATA and out and out[-1][0] == DATA and out[-1][1] == ch:
            out[-1] = (DATA, ch, out[-1][2] + payload)
        else:
            out.append((kind, ch, bytes(payload)))
    return out


def split_feed(stream: bytes, cuts: list[int]) -> list[codec.Record]:
    decoder = TrunkDecoder()
    got: list[codec.Record] = []
    last = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]:
        got += decoder.feed(stream[last:cut])
        last = cut
    assert decoder.at_boundary
    return got


@given(st.lists(records, max_size=30), st.lists(st.integers(0, 10_000), max_size=40))
@settings(max_examples=300, deadline=None)
def test_any_split_of_the_stream_decodes_the_same_records(recs, cuts) -> None:
    stream = b"".join(codec.record(k, c, p) for k, c, p in recs)
    assert normalised(split_feed(stream, cuts)) == normalised(recs)


@given(st.lists(records, max_size=20))
@settings(max_examples=100, deadline=None)
def test_byte_by_byte_is_a_split_too(recs) -> None:
    stream = b"".join(codec.record(k, c, p) for k, c, p in recs)
    decoder = TrunkDecoder()
    got = [r for i in range(len(stream)) for r in decoder.feed(stream[i : i + 1])]
    assert normalised(got) == normalised(recs)


def test_a_whole_read_of_small_records_is_handed_on_without_copies_of_the_read() -> None:
    one = codec.record(DATA, 7, b"x" * 100)
    stream = one * 50
    recs = TrunkDecoder().feed(stream)
    assert len(recs) == 50 and all(r == (DATA, 7, b"x" * 100) for r in recs)


def test_a_big_data_payload_is_handed_on_as_it_arrives() -> None:
    decoder = TrunkDecoder()
    stream = codec.record(DATA, 3, b"a" * 1000) + codec.record(CLOSE, 3)
    assert decoder.feed(stream[:509]) == [(DATA, 3, b"a" * 500)]
    assert not decoder.at_boundary
    assert decoder.feed(stream[509:]) == [(DATA, 3, b"a" * 500), (CLOSE, 3, b"")]


def test_credit_round_trip() -> None:
    (rec,) = TrunkDecoder().feed(codec.credit(9, 65536))
    assert rec[:2] == (CREDIT, 9) and codec.credit_amount(rec[2]) == 65536
    with pytest.raises(ValueError):
        codec.credit(9, 0)


def test_text_is_cut_on_a_character() -> None:
    raw = codec.text("é" * 200)
    assert len(raw) <= codec.MAX_TEXT
    raw.decode("utf-8")  # whole characters only


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (codec.header(99, 1, 0), "unknown trunk record type 99"),
        (codec.header(DATA, 0, 1) + b"x", "DATA record on channel 0"),
        (codec.header(PING, 5, 8) + b"x" * 8, "PING record on channel 5"),
        (codec.header(DATA, 1, 0), "DATA record of 0 bytes"),
        (codec.header(DATA, 1, MAX_DATA + 1), f"DATA record of {MAX_DATA + 1} bytes"),
        (codec.header(CLOSE, 1, 1) + b"x", "CLOSE record of 1 bytes"),
        (codec.header(CREDIT, 1, 4) + b"\0\0\0\0", "CREDIT of 0 on channel 1"),
        (codec.header(CREDIT, 1, 2) + b"\0\1", "CREDIT record of 2 bytes"),
        (codec.header(PONG, 0, 3) + b"abc", "PONG record of 3 bytes"),
        (codec.header(OPEN, 1, 300), "OPEN record of 300 bytes"),
    ],
)
def test_what_is_not_a_record_is_refused_from_its_header(raw: bytes, why: str) -> None:
    with pytest.raises(TrunkFormatError, match=why):
        TrunkDecoder().feed(raw)


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=5))
@settings(max_examples=300, deadline=None)
def test_garbage_is_decoded_or_refused_never_anything_else(raw, cuts) -> None:
    decoder = TrunkDecoder()
    last = 0
    try:
        for cut in [*sorted(c % (len(raw) + 1) for c in cuts), len(raw)]:
            for kind, ch, _payload in decoder.feed(raw[last:cut]):
                assert kind in codec.NAMES and (ch == 0) is (kind in (PING, PONG, GOAWAY))
            last = cut
    except TrunkFormatError:
        pass
