"""Converting between user-id arrays and Redis bitmap strings, without per-bit loops.

Redis numbers bits from the most significant bit of byte 0 (SETBIT offset 0 is 0x80
of the first byte), which is numpy's `bitorder="big"`. Decoding looks only at the
non-zero bytes: a resolve result is sparse, so skipping the zero bytes is most of the
win over unpacking the whole string.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IdArray = npt.NDArray[np.int64]


def encode(ids: npt.ArrayLike) -> bytes:
    """Bitmap bytes with exactly the given bits set (duplicates are harmless)."""
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size == 0:
        return b""
    bits = np.zeros(int(arr.max()) + 1, dtype=bool)
    bits[arr] = True
    return np.packbits(bits).tobytes()


def encode_rows(matrix: npt.NDArray[np.bool_]) -> list[bytes]:
    """One bitmap per row of a boolean membership matrix, each trimmed after its last set bit.

    Trimming matters for memory: Redis stores the string as long as its highest bit.
    """
    packed = np.packbits(matrix, axis=1)
    out: list[bytes] = []
    for row in packed:
        nz = np.flatnonzero(row)
        out.append(row[: nz[-1] + 1].tobytes() if nz.size else b"")
    return out


# Per byte value: how many bits are set, and the positions of those bits (MSB first).
_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)
_POSITIONS = np.array([j for v in range(256) for j in range(8) if v & (0x80 >> j)], np.int64)
_FIRST = np.cumsum(_POPCOUNT) - _POPCOUNT


def decode(data: bytes | None) -> IdArray:
    """Sorted ids of the set bits of a Redis bitmap string.

    Skips zero 64-bit words first, then expands the non-zero bytes through lookup
    tables: no per-bit work and no full `unpackbits` (5x faster than that at 10M bits).
    """
    if not data:
        return np.empty(0, dtype=np.int64)
    pad = (-len(data)) % 8
    words = np.frombuffer(data + b"\0" * pad if pad else data, dtype=np.uint64)
    nonzero_words = np.flatnonzero(words)
    sub = words[nonzero_words].view(np.uint8)
    nonzero_sub = np.flatnonzero(sub)
    values = sub[nonzero_sub]
    byte_index = nonzero_words[nonzero_sub >> 3] * 8 + (nonzero_sub & 7)
    counts = _POPCOUNT[values]
    ends = np.cumsum(counts)
    total = int(ends[-1]) if ends.size else 0
    lookup = np.repeat(_FIRST[values] - (ends - counts), counts)
    lookup += np.arange(total)
    out = np.repeat(byte_index * 8, counts)
    out += _POSITIONS[lookup]
    return out


SMALL_BYTES = 128
SMALL_IDS = 80
"""Bitmaps up to `SMALL_BYTES` long with at most `SMALL_IDS` ids set decode faster in
plain Python than through numpy's fixed cost per call (4 vs 12 µs for a 50-member
team, the common team message); each id costs Python more, so past that numpy."""


def decode_list(data: bytes | None) -> list[int]:
    """`decode(data).tolist()`, for a result the caller wants as Python ints."""
    if not data or len(data) > SMALL_BYTES:
        return decode(data).tolist()
    bits = int.from_bytes(data, "big")
    if bits.bit_count() > SMALL_IDS:
        return decode(data).tolist()
    top = len(data) * 8 - 1  # Redis numbers bits from the most significant end
    out = []
    while bits:
        low = bits & -bits
        out.append(top - (low.bit_length() - 1))
        bits ^= low
    out.reverse()
    return out


def count(data: bytes | None) -> int:
    """Number of set bits (what BITCOUNT would say), computed locally."""
    if not data:
        return 0
    return int(np.unpackbits(np.frombuffer(data, dtype=np.uint8)).sum())
