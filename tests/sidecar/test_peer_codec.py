"""The sidecar peer-link batch format: round trips, verbatim frames, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsop.protocol import encode_message
from wsop.sidecar.peer_codec import (
    TO_HOLDER,
    TO_OWNER,
    TO_OWNER_FINAL,
    Ack,
    Deliver,
    Holding,
    PeerDecoder,
    PeerFormatError,
    decode_batch,
    encode_batch,
    encode_item,
    encode_pieces,
)

tenants = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
users = st.one_of(st.integers(0, 2**40), st.text("abcdef-0123456789", min_size=1, max_size=10))
json_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
items = st.one_of(
    st.builds(
        lambda t, u, a, m, d: Deliver(t, u, a, m, encode_message(1, d, None, 0)),
        tenants,
        st.lists(users, max_size=5),
        st.integers(0, 2**31),
        st.sampled_from([TO_OWNER, TO_HOLDER, TO_OWNER_FINAL]),
        json_data,
    ),
    st.builds(Ack, st.integers(1, 2**31), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.builds(Holding, tenants, users, st.booleans(), st.none() | st.sampled_from(["s0", "s9"])),
)


@given(st.lists(items, min_size=1, max_size=8))
def test_batches_round_trip(batch) -> None:
    raw = encode_batch([encode_item(i) for i in batch])
    assert decode_batch(raw) == batch
    assert decode_batch(raw.encode()) == batch


def test_frames_travel_verbatim_even_with_escaped_newlines() -> None:
    frame = encode_message(3, {"t": "a\nb"}, "c1", 10, ("eng",))
    (item,) = decode_batch(encode_item(Deliver("acme", [1], 0, TO_HOLDER, frame)))
    assert item.frame == frame


def test_raw_newline_in_a_frame_is_refused() -> None:
    with pytest.raises(PeerFormatError):
        encode_item(Deliver("acme", [1], 0, TO_OWNER, '{"a":\n1}'))


@pytest.mark.parametrize(
    "raw",
    [
        '["d","acme",[1],0,"o"]',
        "nope\n",
        '["x",1]\n',
        '["d","acme",1,0,"o"]\n{}',
        '["d","acme",[1],0,"z"]\n{}',
        '["a",1]\n',
        b'["a",1,2,3]\n\xff',
    ],
)
def test_malformed_batches_raise_peer_format_error(raw) -> None:
    with pytest.raises(PeerFormatError):
        decode_batch(raw)


@given(st.lists(items, min_size=1, max_size=6), st.integers(1, 40), st.integers(1, 5))
def test_frames_in_pieces_are_reassembled_across_batches(batch, piece, per_batch) -> None:
    """Any item list, frames cut into pieces of any size, the encoded items spread over
    batches of any length: one decoder per link gives the items back."""
    encoded = [text for item in batch for text in encode_pieces(item, piece)]
    decoder = PeerDecoder()
    got = []
    for start in range(0, len(encoded), per_batch):
        got.extend(decoder.feed(encode_batch(encoded[start : start + per_batch])))
    assert got == batch and not decoder.partial


def test_a_big_frame_goes_in_pieces_no_larger_than_asked() -> None:
    frame = encode_message(1, "é" * 5000, "x", 0)  # 30 KB of escapes
    texts = encode_pieces(Deliver("acme", [1, 2], 9, TO_OWNER, frame), 4096)
    assert len(texts) == -(-len(frame) // 4096)
    assert all(len(t.split("\n", 1)[1]) <= 4096 for t in texts)
    assert decode_batch(encode_batch(texts)) == [Deliver("acme", [1, 2], 9, TO_OWNER, frame)]


@pytest.mark.parametrize(
    "raw",
    [
        '["+"]\nabc',  # a piece without its header
        '["d","acme",[1],0,"o",3]\nab\n["+"]\ncd',  # the batch ends inside the frame
        '["d","acme",[1],0,"o",2]\nab\n["a",1,1,0]\n',  # pieces interrupted
        '["d","acme",[1],0,"o",1]\nab',  # "one piece" is not pieces
    ],
)
def test_broken_pieces_raise_peer_format_error(raw) -> None:
    with pytest.raises(PeerFormatError):
        decode_batch(raw)


def test_history_items_round_trip_in_one_piece_and_in_many() -> None:
    from wsop.sidecar.peer_codec import LogEnd, LogEntry, ReplayAnswer, ReplayAsk

    big = encode_message(1, "b" * 20_000, "m", 0)
    items = [
        Deliver("acme", [1, 2], 7, TO_HOLDER, big, ["e1:3", ""]),
        Deliver("acme", [1], 0, TO_HOLDER, "{}", ["e1:4"]),
        LogEntry("acme", 42, "9b1e0f3a", 2, 1530, big),
        LogEntry("acme", "u-1", "9b1e0f3a", 3, 0, "{}"),
        LogEnd("acme", 42, "9b1e0f3a", 3, 1, 2400),
        ReplayAsk(5, "acme", "u-1", "9b1e0f3a:1"),
        ReplayAnswer(5, None, "9b1e0f3a", 2, [("9b1e0f3a:2", big)]),
        ReplayAnswer(6, "window_exceeded", None, 0, []),
    ]
    assert decode_batch(encode_batch([encode_item(i) for i in items])) == items
    texts = [t for i in items for t in encode_pieces(i, 4096)]
    assert len(texts) > len(items)
    assert decode_batch(encode_batch(texts)) == items


@pytest.mark.parametrize(
    "head",
    [
        '["d","acme",[1,2],0,"h",1,["a:1"]]',  # one offset for two users
        '["d","acme",[1],0,"h",1,[7]]',
        '["l","acme",1,"e",1]',
        '["L","acme",1,"e"]',
        '["R",1,null,"e",0,1]',  # payload is not a list of pairs
        '["r",1,"acme"]',
    ],
)
def test_malformed_history_items_are_refused(head: str) -> None:
    with pytest.raises(PeerFormatError):
        decode_batch(head + "\n{}")
