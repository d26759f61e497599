"""A validated membership (member ids and weights) in one canonical order.

Every process must build the same placement from the same membership whatever order
it discovered the members in (DNS answers, the Kubernetes API and `--nodes` all list
them differently), so `Membership` sorts its members. The order is *natural*
("ws-2" < "ws-10"), which is what `jump` needs for StatefulSet ordinals and harmless
for the others.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wsop.errors import UsageError

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders embedded numbers numerically ("ws-2" before "ws-10").

    The raw name is the final tie-breaker so "a01" and "a1" still get a fixed order.
    """
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


@dataclass(frozen=True)
class Membership:
    """Members in natural order with their weights (1.0 when not given)."""

    members: tuple[str, ...]
    weights: tuple[float, ...]

    @classmethod
    def of(cls, names: Iterable[str], weights: Mapping[str, float] | None = None) -> Membership:
        """Validate and canonicalise: non-empty, unique names, finite weights > 0."""
        listed = [str(n) for n in names]
        if not listed:
            raise UsageError("the membership is empty: give at least one node")
        for name in listed:
            if not name or name != name.strip():
                raise UsageError(f"invalid node name {name!r}: empty or padded with spaces")
        dups = sorted(name for name, count in Counter(listed).items() if count > 1)
        if dups:
            raise UsageError(f"duplicate node name(s): {', '.join(dups)}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(listed))
        if unknown:
            raise UsageError(f"weight given for unknown node(s): {', '.join(unknown)}")
        for name, weight in weights.items():
            if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
                raise UsageError(f"weight of {name!r} must be a finite number > 0, got {weight}")
        ordered = tuple(sorted(listed, key=natural_key))
        return cls(ordered, tuple(float(weights.get(n, 1.0)) for n in ordered))

    @property
    def uniform(self) -> bool:
        """True when every member has the same weight (the unweighted fast paths apply)."""
        return len(set(self.weights)) == 1

    def __len__(self) -> int:
        return len(self.members)

    def shares(self) -> dict[str, float]:
        """Each member's ideal fraction of the keys (its weight over the total)."""
        total = sum(self.weights)
        return {m: w / total for m, w in zip(self.members, self.weights, strict=True)}


def parse_nodes(spec: str) -> Membership:
    """Parse `--nodes a=2,b,c`: comma-separated names, each with an optional `=weight`."""
    names: list[str] = []
    weights: dict[str, float] = {}
    entries = [e.strip() for e in spec.split(",")] if spec.strip() else []
    for entry in entries:
        if not entry:
            raise UsageError(f"empty node name in {spec!r}")
        name, eq, raw = entry.partition("=")
        name = name.strip()
        if eq:
            try:
                weights[name] = float(raw)
            except ValueError:
                raise UsageError(f"weight of {name!r} is not a number: {raw.strip()!r}") from None
        names.append(name)
    return Membership.of(names, weights)
