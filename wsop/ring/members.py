"""Where a membership comes from: the seam for `--nodes`, `--local` and Kubernetes.

Only `--nodes` exists today. Sources that need I/O (the local stack's state, the
Kubernetes API) will be passed in as callables returning member names, so this package
stays free of I/O and every source goes through the same validation (`Membership.of`).
"""

from __future__ import annotations

from collections.abc import Callable

from wsop.errors import UsageError
from wsop.ring.membership import Membership, parse_nodes

MemberSource = Callable[[], list[str]]
"""A discovery function (e.g. the local stack's sidecars, a label selector's pods)."""


def resolve_members(nodes: str | None, source: MemberSource | None = None) -> Membership:
    """The membership from exactly one source: a `--nodes` spec or a discovery callable."""
    if nodes is not None and source is not None:
        raise UsageError("give the nodes one way only (--nodes or a discovery source)")
    if nodes is not None:
        return parse_nodes(nodes)
    if source is not None:
        return Membership.of(source())
    raise UsageError("no nodes given: use --nodes a,b,c")
