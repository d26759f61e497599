"""Jump consistent hash (Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash
Algorithm", 2014) over *ordinal* members.

Jump maps a 64-bit key hash to a bucket in [0, n) with no table and perfect expected
balance, but buckets are numbers, not names: member i is the i-th in natural order
("ws-0", "ws-1", …, "ws-10"), as a StatefulSet names its pods. Limits, by construction:

- only appending a member (a new highest ordinal) or removing the *last* one moves the
  minimal 1/(n+1) or 1/n of keys; removing a member in the middle renumbers every member
  after it and reshuffles their keys;
- no weights (refused with a clear error).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsop.ring.base import Placement
from wsop.ring.keys import hash64, hash_keys
from wsop.ring.membership import Membership

_MULTIPLIER = 2862933555777941757
_MASK64 = (1 << 64) - 1
_TWO31 = float(1 << 31)
_MIX = 0x9E3779B97F4A7C15
_EXTRA_DRAWS = 4


def jump_bucket(key_hash: int, buckets: int) -> int:
    """The paper's JumpConsistentHash, on Python ints (wrapped to 64 bits)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key_hash = (key_hash * _MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * (_TWO31 / float((key_hash >> 33) + 1)))
    return b


def jump_buckets(key_hashes: np.ndarray, buckets: int) -> np.ndarray:
    """Vectorised `jump_bucket`: iterate while any key is still jumping (~ln n rounds)."""
    key = key_hashes.astype(np.uint64, copy=True)
    b = np.full(key.shape, -1, dtype=np.int64)
    j = np.zeros(key.shape, dtype=np.int64)
    active = np.arange(key.size)
    multiplier, one = np.uint64(_MULTIPLIER), np.uint64(1)
    while active.size:
        b[active] = j[active]
        k = key[active] * multiplier + one  # uint64 arithmetic wraps, as in C
        key[active] = k
        step = _TWO31 / ((k >> np.uint64(33)).astype(np.float64) + 1.0)
        j[active] = ((b[active] + 1) * step).astype(np.int64)
        active = active[j[active] < buckets]
    return b


class Jump(Placement):
    """Jump consistent hash; members are buckets in natural order."""

    name = "jump"
    supports_weights = False

    def __init__(self, membership: Membership) -> None:
        super().__init__(membership)
        self._count = len(self.members)

    def owner_of(self, data: bytes) -> str:
        return self.members[jump_bucket(hash64(data), self._count)]

    def indices(self, encoded: Sequence[bytes]) -> np.ndarray:
        return jump_buckets(hash_keys(encoded), self._count).astype(np.intp)

    def preference_of(self, data: bytes) -> list[str]:
        """Owner first, then jump buckets of re-mixed hashes, then ordinal successors.

        Re-mixing spreads a full member's overflow over the fleet; after a few draws the
        remaining members follow in ordinal order from the owner, so the list is total.
        """
        key_hash = hash64(data)
        owner = jump_bucket(key_hash, self._count)
        ranked = {owner: None}
        for draw in range(1, _EXTRA_DRAWS * self._count):
            if len(ranked) == self._count:
                break
            ranked.setdefault(jump_bucket((key_hash + draw * _MIX) & _MASK64, self._count))
        for offset in range(1, self._count):
            ranked.setdefault((owner + offset) % self._count)
        return [self.members[i] for i in ranked]
