"""Pure bitmap encoding: the Redis bit order, trimming, and decode == the set of ids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsop.acl import bitmap


def test_bit_order_matches_redis_setbit() -> None:
    # SETBIT k 0 1 gives b"\x80"; SETBIT k 7 1 gives b"\x01"; SETBIT k 8 1 gives b"\x00\x80".
    assert bitmap.encode([0]) == b"\x80"
    assert bitmap.encode([7]) == b"\x01"
    assert bitmap.encode([8]) == b"\x00\x80"
    assert bitmap.encode([0, 7, 8]) == b"\x81\x80"


def test_empty() -> None:
    assert bitmap.encode([]) == b""
    assert bitmap.decode(b"").tolist() == []
    assert bitmap.decode(b"\x00\x00").tolist() == []


@given(st.sets(st.integers(min_value=0, max_value=5000)))
def test_decode_inverts_encode(ids: set[int]) -> None:
    data = bitmap.encode(sorted(ids))
    assert bitmap.decode(data).tolist() == sorted(ids)
    assert bitmap.count(data) == len(ids)


@given(st.lists(st.sets(st.integers(min_value=0, max_value=300)), min_size=1, max_size=5))
def test_encode_rows_trims_each_row(rows: list[set[int]]) -> None:
    matrix = np.zeros((len(rows), 301), dtype=bool)
    for i, row in enumerate(rows):
        matrix[i, sorted(row)] = True
    for data, row in zip(bitmap.encode_rows(matrix), rows, strict=True):
        assert data == bitmap.encode(sorted(row))


@given(st.sets(st.integers(min_value=0, max_value=8 * bitmap.SMALL_BYTES + 200)))
def test_decode_list_is_decode_on_both_sides_of_its_small_path(ids: set[int]) -> None:
    data = bitmap.encode(sorted(ids))
    assert bitmap.decode_list(data) == bitmap.decode(data).tolist() == sorted(ids)


@pytest.mark.parametrize("ids", [range(81), range(0, 1024, 3), range(5, 1030, 100)])
def test_decode_list_past_its_small_path(ids: range) -> None:
    data = bitmap.encode(list(ids))
    assert bitmap.decode_list(data) == list(ids)
