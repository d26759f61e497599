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
