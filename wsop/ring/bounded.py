"""Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam, SODA 2018)
on top of any base placement.

Every member has a capacity ⌈(1 + ε) · total · weight / Σweights⌉ (⌈(1 + ε) · mean⌉ when
unweighted), where total counts the live loads plus the keys being assigned. Keys are
assigned in the order given; each goes to the first member of the base's preference order
(`Placement.preference_of`: rendezvous score order, ring successors, …) that is still
under capacity. The capacities add up to at least the total, so a key always finds a
member; a member already above its capacity from `current_loads` simply gets no more.

The answer depends on live loads and on the order of assignment, so it is not a pure
function of the membership: the load balancer keeps using the base's `owner()`, and the
rebalancer uses `assign` to pick moves that bring max/mean down to ≤ 1 + ε.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from wsop.errors import UsageError
from wsop.ring.base import Placement
from wsop.ring.keys import Key, encode_keys


class BoundedLoads:
    """Assign keys over `base` so that no member exceeds its (1 + ε) capacity."""

    def __init__(self, base: Placement, epsilon: float = 0.25) -> None:
        if not math.isfinite(epsilon) or epsilon < 0:
            raise UsageError(f"epsilon must be a finite number ≥ 0, got {epsilon}")
        self.base = base
        self.epsilon = float(epsilon)

    def capacities(self, total: int) -> dict[str, int]:
        """The most keys each member may hold when `total` keys are placed in all."""
        weights = self.base.membership.weights
        scale = (1.0 + self.epsilon) * total / sum(weights)
        return {m: math.ceil(scale * w) for m, w in zip(self.base.members, weights, strict=True)}

    def assign_indices(
        self, encoded: Sequence[bytes], current_loads: Mapping[str, int] | None = None
    ) -> np.ndarray:
        """Member index per encoded key; `current_loads` counts keys already placed."""
        members = self.base.members
        loads = [int((current_loads or {}).get(m, 0)) for m in members]
        if any(load < 0 for load in loads):
            raise UsageError("current loads must be ≥ 0")
        unknown = set(current_loads or {}) - set(members)
        if unknown:
            raise UsageError(f"loads given for non-members: {', '.join(sorted(unknown))}")
        caps_by_name = self.capacities(sum(loads) + len(encoded))
        caps = [caps_by_name[m] for m in members]
        position = {m: i for i, m in enumerate(members)}
        first_choice = self.base.indices(encoded).tolist()
        chosen = np.empty(len(encoded), dtype=np.intp)
        for n, (data, owner) in enumerate(zip(encoded, first_choice, strict=True)):
            if loads[owner] >= caps[owner]:
                owner = next(
                    i
                    for i in map(position.__getitem__, self.base.preference_of(data))
                    if loads[i] < caps[i]
                )
            loads[owner] += 1
            chosen[n] = owner
        return chosen

    def assign(
        self, keys: Iterable[Key], current_loads: Mapping[str, int] | None = None
    ) -> dict[Key, str]:
        """`{(tenant, user): member}` for `keys`, in order, on top of `current_loads`."""
        listed = list(keys)
        chosen = self.assign_indices(encode_keys(listed), current_loads)
        return dict(zip(listed, self.base.names(chosen), strict=True))
