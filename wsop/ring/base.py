"""The one small interface every placement algorithm implements.

A `Placement` is built from a `Membership` alone (no clock, no randomness, no process
state), so the load balancer and every sidecar that see the same membership compute the
same owner for every key. Algorithms implement three primitives on *encoded* keys
(`wsop.ring.keys.encode_key`); the `(tenant, user)` conveniences live here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import ClassVar

import numpy as np

from wsop.errors import UsageError
from wsop.ring.keys import Key, encode_key, encode_keys
from wsop.ring.membership import Membership


class Placement(ABC):
    """Maps keys to members of a fixed membership.

    Subclasses implement `owner_of` (the per-connection hot path: keep it O(1) or a tight
    loop over prehashed members), `indices` (vectorised, numpy) and `preference_of`
    (every member ranked for a key: the fallback order bounded loads walk).
    """

    name: ClassVar[str]
    supports_weights: ClassVar[bool] = True

    def __init__(self, membership: Membership) -> None:
        if not self.supports_weights and not membership.uniform:
            raise UsageError(f"algorithm {self.name!r} does not support weights")
        self.membership = membership
        self.members: tuple[str, ...] = membership.members
        self._names = np.array(self.members, dtype=object)

    # --- primitives on encoded keys -------------------------------------------------
    @abstractmethod
    def owner_of(self, data: bytes) -> str:
        """The member owning the encoded key `data`."""

    @abstractmethod
    def indices(self, encoded: Sequence[bytes]) -> np.ndarray:
        """Owner of each encoded key, as indices into `self.members` (an int array)."""

    @abstractmethod
    def preference_of(self, data: bytes) -> list[str]:
        """Every member, most preferred first; element 0 is always `owner_of(data)`."""

    # --- (tenant, user) conveniences ------------------------------------------------
    def owner(self, key: Key) -> str:
        """The member owning `(tenant, user)`."""
        return self.owner_of(encode_key(key))

    def owners(self, keys: Iterable[Key]) -> list[str]:
        """Vectorised `owner`: `owners(ks) == [owner(k) for k in ks]`."""
        return self.names(self.indices(encode_keys(keys)))

    def preference(self, key: Key) -> list[str]:
        """All members ranked for `(tenant, user)`, owner first."""
        return self.preference_of(encode_key(key))

    def names(self, indices: np.ndarray) -> list[str]:
        """Member names for an array of member indices."""
        return self._names[indices].tolist()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.members)} members)"
