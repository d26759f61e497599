"""Algorithms by name: the one place a name (`--algo`, config) becomes a placement.

`bounded` is not a placement of its own but bounded loads over a base placement
(`base=`, default the default algorithm; `epsilon=`, default 0.25).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from wsop.errors import UsageError
from wsop.ring.base import Placement
from wsop.ring.bounded import BoundedLoads
from wsop.ring.jump import Jump
from wsop.ring.ketama import HashRing
from wsop.ring.maglev import Maglev
from wsop.ring.membership import Membership
from wsop.ring.rendezvous import Rendezvous

PLACEMENTS: dict[str, type[Placement]] = {
    cls.name: cls for cls in (Rendezvous, Maglev, HashRing, Jump)
}
BOUNDED = "bounded"
DEFAULT_ALGORITHM = "maglev"
"""Chosen by bench/ring.py: see docs/ring.md ("Choosing the default")."""

DEFAULT_EPSILON = 0.25


def algorithm_names() -> list[str]:
    """Every valid `--algo` value, placements first."""
    return [*PLACEMENTS, BOUNDED]


def get_algorithm(name: str) -> type[Placement] | type[BoundedLoads]:
    """The class behind `name`; an unknown name is a `UsageError` listing valid ones."""
    if name == BOUNDED:
        return BoundedLoads
    try:
        return PLACEMENTS[name]
    except KeyError:
        valid = ", ".join(algorithm_names())
        raise UsageError(f"unknown algorithm {name!r}; choose one of: {valid}") from None


def check_routing_algorithm(name: str) -> str:
    """`name` if the LB and the sidecars can route by it, else a `UsageError`.

    Routing needs a pure function of the membership, which every process computes alike;
    `bounded` depends on live loads, so it is what `wsop rebalance` applies on top of the
    ring, never how the stack routes.
    """
    get_algorithm(name)
    if name == BOUNDED:
        rings = ", ".join(PLACEMENTS)
        raise UsageError(
            f"--algo bounded cannot route a stack (it depends on live loads); pick a ring "
            f"({rings}) — `wsop rebalance` applies bounded loads on top of it"
        )
    return name


def _construct(cls: type[Placement], membership: Membership, opts: Mapping[str, Any]) -> Placement:
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "membership"}
    unknown = sorted(set(opts) - accepted)
    if unknown:
        allowed = ", ".join(sorted(accepted)) or "none"
        raise UsageError(
            f"algorithm {cls.name!r} has no option(s) {', '.join(unknown)} (options: {allowed})"
        )
    return cls(membership, **opts)


def build(
    name: str,
    members: Membership | Iterable[str],
    weights: Mapping[str, float] | None = None,
    **opts: Any,
) -> Placement | BoundedLoads:
    """Build algorithm `name` over `members` (a `Membership`, or names plus `weights`).

    For `bounded`, `base` and `epsilon` are taken from `opts` and the rest go to the base.
    """
    if isinstance(members, Membership):
        if weights is not None:
            raise UsageError("pass weights inside the Membership, not both")
        membership = members
    else:
        membership = Membership.of(members, weights)
    cls = get_algorithm(name)
    if cls is BoundedLoads:
        base_name = opts.pop("base", DEFAULT_ALGORITHM)
        epsilon = opts.pop("epsilon", DEFAULT_EPSILON)
        base = build(base_name, membership, **opts)
        if not isinstance(base, Placement):
            raise UsageError("the base of bounded loads must be a placement, not 'bounded'")
        return BoundedLoads(base, epsilon)
    return _construct(cls, membership, opts)
