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


def decode(data: bytes | None) -> IdArray:
    """Sorted ids of the set bits of a Redis bitmap string."""
    if not data:
        return np.empty(0, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    nonzero = np.flatnonzero(buf)
    if nonzero.size == 0:
        return np.empty(0, dtype=np.int64)
    rows, cols = np.nonzero(np.unpackbits(buf[nonzero]).reshape(-1, 8))
    return nonzero[rows].astype(np.int64) * 8 + cols


def count(data: bytes | None) -> int:
    """Number of set bits (what BITCOUNT would say), computed locally."""
    if not data:
        return 0
    return int(np.unpackbits(np.frombuffer(data, dtype=np.uint8)).sum())
