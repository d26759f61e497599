"""Rendezvous (highest random weight) hashing, score-compatible with websocket-operator.

For member m and encoded key k: h = xxh3_64(m_utf8 ‖ k) (plain concatenation, seed 0),
u = (h & (2^53 − 1)) / 2^53, score = weight · (1 / ln u); the *lowest* score wins.
That is websocket-operator's `ComputeWeightedScore`/`LocateKey` (Go, zeebo/xxh3)
expression for expression, i.e. weight / −ln u highest wins, so a Go sidecar and a Python
one agree. Ties (probability ~2^-53) go to the first member in natural order.

When all weights are equal the score is a monotone function of the 53-bit integer, so
we skip the logarithm and take the largest `h & (2^53 − 1)`: the same winner, cheaper.
Adding or removing a member moves only the keys it wins or held (minimal movement).
Cost: one hash per member per key, so a lookup is O(members).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from wsop.ring.base import Placement
from wsop.ring.keys import hash64
from wsop.ring.membership import Membership

LOW53 = (1 << 53) - 1
TWO53 = float(1 << 53)


def weighted_score(weight: float, h: int) -> float:
    """websocket-operator's score: weight / ln(u); lower is better; u == 0 scores −0.0."""
    u = (h & LOW53) / TWO53
    return weight * (1.0 / math.log(u)) if u > 0.0 else -0.0


class Rendezvous(Placement):
    """HRW over xxh3-64; member name bytes are prehashed into per-member prefixes."""

    name = "rendezvous"

    def __init__(self, membership: Membership) -> None:
        super().__init__(membership)
        self._prefixes = [m.encode() for m in self.members]
        self._weights = list(membership.weights)
        self._uniform = membership.uniform

    def _scores(self, data: bytes) -> list[float] | list[int]:
        """Per-member scores; uniform: larger wins, weighted: smaller wins."""
        if self._uniform:
            return [hash64(p + data) & LOW53 for p in self._prefixes]
        return [
            weighted_score(w, hash64(p + data))
            for p, w in zip(self._prefixes, self._weights, strict=True)
        ]

    def owner_of(self, data: bytes) -> str:
        scores = self._scores(data)
        best = max(scores) if self._uniform else min(scores)
        return self.members[scores.index(best)]

    def preference_of(self, data: bytes) -> list[str]:
        scores = self._scores(data)
        sign = -1 if self._uniform else 1
        order = sorted(range(len(scores)), key=lambda i: (sign * scores[i], i))
        return [self.members[i] for i in order]

    def _member_scores(self, i: int, encoded: Sequence[bytes]) -> np.ndarray:
        """Scores of member i for every key (one C-level hash per key)."""
        hashes = np.fromiter(
            map(hash64, map(self._prefixes[i].__add__, encoded)),
            dtype=np.uint64,
            count=len(encoded),
        )
        low = hashes & np.uint64(LOW53)
        if self._uniform:
            return low
        with np.errstate(divide="ignore"):
            return self._weights[i] * (1.0 / np.log(low.astype(np.float64) / TWO53))

    def indices(self, encoded: Sequence[bytes]) -> np.ndarray:
        """Running best over members keeps memory O(keys) (no members × keys matrix)."""
        best = self._member_scores(0, encoded)
        owner = np.zeros(len(encoded), dtype=np.intp)
        for i in range(1, len(self.members)):
            scores = self._member_scores(i, encoded)
            better = scores > best if self._uniform else scores < best
            owner[better] = i
            best = np.where(better, scores, best)
        return owner
