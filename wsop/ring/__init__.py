"""Placement of `(tenant, user)` keys on sidecars, shared by the load balancer and every
sidecar: pure code, deterministic from the membership alone (see docs/ring.md).

    from wsop.ring import build
    ring = build("maglev", ["ws-0", "ws-1", "ws-2"])
    ring.owner(("acme", 42))            # -> "ws-1"
"""

from wsop.ring.analysis import DiffReport, LoadReport, diff_report, load_report, place
from wsop.ring.base import Placement
from wsop.ring.bounded import BoundedLoads
from wsop.ring.keys import Key, encode_key, encode_keys, synthetic_keys
from wsop.ring.members import resolve_members
from wsop.ring.membership import Membership, parse_nodes
from wsop.ring.registry import (
    BOUNDED,
    DEFAULT_ALGORITHM,
    DEFAULT_EPSILON,
    PLACEMENTS,
    algorithm_names,
    build,
    check_routing_algorithm,
    get_algorithm,
)

__all__ = [
    "BOUNDED",
    "DEFAULT_ALGORITHM",
    "DEFAULT_EPSILON",
    "DiffReport",
    "LoadReport",
    "PLACEMENTS",
    "BoundedLoads",
    "Key",
    "Membership",
    "Placement",
    "algorithm_names",
    "build",
    "check_routing_algorithm",
    "diff_report",
    "encode_key",
    "encode_keys",
    "get_algorithm",
    "load_report",
    "parse_nodes",
    "place",
    "resolve_members",
    "synthetic_keys",
]
