"""Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
Balancer", NSDI 2016, §3.4).

Each member gets a permutation of the M table slots from two hashes of its name
(offset = h1 mod M, skip = h2 mod (M − 1) + 1, M prime so every skip is a generator);
members take turns claiming their next free preferred slot until the table is full. A
key's owner is `table[xxh3(key) mod M]`: one hash and one index, whatever the size of
the fleet — the cheapest lookup here.

Balance: slot counts differ by at most one between equal-weight members, so with M
≥ 100 × members the table itself is within ~1% of even. Movement is *nearly* minimal:
a membership change also reshuffles some slots between surviving members, an excess
that grows with members and shrinks with M. Measured (bench/ring.py, docs/ring.md):
at M = 65537 the excess is ~2% for 10 members but ~25% for 50; at M = 1048583 it is
≤ 5% up to 50 members and ~12% at 100.

The table size must NOT follow the membership: `key mod M` changes for almost every key
when M does, so a size derived from the member count would reshuffle everything on a
scale-up. The default is therefore one constant, 1048583 (the smallest prime ≥ 2^20;
~0.5–0.9 s to build in pure Python, so rebuild off the event loop), replaced by the smallest
prime ≥ 100 × members only for fleets above ~10,000 members. Every process of a
deployment must use the same size.

Weights follow Envoy's scheme: with weights normalised to max 1, a member claims a slot
in iteration t only when t · weight ≥ its next target, so it claims ∝ weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import xxhash

from wsop.errors import UsageError
from wsop.ring.base import Placement
from wsop.ring.keys import hash64, hash_keys
from wsop.ring.membership import Membership

DEFAULT_TABLE_SIZE = 1048583
"""Smallest prime ≥ 2^20: fixed so that membership changes never change it."""
SLOTS_PER_MEMBER = 100
"""The paper's floor: M ≥ 100 × members (validated for explicit sizes too)."""


def is_prime(n: int) -> bool:
    """Deterministic trial division; table sizes are small (≤ a few million)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def next_prime(n: int) -> int:
    """Smallest prime ≥ n."""
    while not is_prime(n):
        n += 1
    return n


def default_table_size(members: int) -> int:
    """1048583, or the smallest prime ≥ 100 × members for fleets too big for it."""
    floor = SLOTS_PER_MEMBER * members
    return DEFAULT_TABLE_SIZE if floor <= DEFAULT_TABLE_SIZE else next_prime(floor)


def populate(offsets: list[int], skips: list[int], weights: list[float], size: int) -> list[int]:
    """Fill the lookup table: member index per slot (the paper's Pseudocode 1)."""
    count = len(offsets)
    table = [-1] * size
    position = list(offsets)
    top = max(weights)
    relative = [w / top for w in weights]
    target = [0.0] * count
    filled = 0
    iteration = 0
    while True:
        iteration += 1
        for i in range(count):
            if iteration * relative[i] < target[i]:
                continue
            target[i] += 1.0
            slot, skip = position[i], skips[i]
            while table[slot] >= 0:
                slot += skip
                if slot >= size:
                    slot -= size
            table[slot] = i
            slot += skip
            position[i] = slot - size if slot >= size else slot
            filled += 1
            if filled == size:
                return table


class Maglev(Placement):
    """Maglev lookup table; `table_size` must be a prime ≥ 100 × members."""

    name = "maglev"

    def __init__(self, membership: Membership, table_size: int | None = None) -> None:
        super().__init__(membership)
        count = len(self.members)
        size = default_table_size(count) if table_size is None else int(table_size)
        if size < SLOTS_PER_MEMBER * count or not is_prime(size):
            raise UsageError(
                f"maglev table size must be a prime ≥ {SLOTS_PER_MEMBER} × members "
                f"(≥ {SLOTS_PER_MEMBER * count}), got {size}"
            )
        self.table_size = size
        names = [m.encode() for m in self.members]
        # Two seeds of xxh3 give the paper's two independent hashes of the member name.
        offsets = [xxhash.xxh3_64_intdigest(n, 0) % size for n in names]
        skips = [xxhash.xxh3_64_intdigest(n, 1) % (size - 1) + 1 for n in names]
        slots = populate(offsets, skips, list(membership.weights), size)
        self._table = np.array(slots, dtype=np.int32)
        self._slot_names = [self.members[i] for i in slots]

    def owner_of(self, data: bytes) -> str:
        return self._slot_names[hash64(data) % self.table_size]

    def indices(self, encoded: Sequence[bytes]) -> np.ndarray:
        return self._table[hash_keys(encoded) % np.uint64(self.table_size)]

    def preference_of(self, data: bytes) -> list[str]:
        """Walk the table forward from the key's slot, keeping first sightings.

        Neighbouring slots belong to unrelated members, so overflow spreads instead of
        piling onto one neighbour. Members never met within one lap (impossible unless
        weights are extreme) follow in natural order.
        """
        start = hash64(data) % self.table_size
        seen: dict[str, None] = {}
        wanted = len(self.members)
        names = self._slot_names
        for step in range(self.table_size):
            seen.setdefault(names[(start + step) % self.table_size])
            if len(seen) == wanted:
                break
        for member in self.members:
            seen.setdefault(member)
        return list(seen)
