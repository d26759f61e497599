"""How big a local stack may get: the one bound `up`, `scale` and `--chaos scale=N` share.

Every local sidecar is a whole Python process (tens of MB and a second of start-up
each), every pair of sidecars keeps peer links, and the LB keeps trunks to each one:
past a few dozen, a laptop runs out of memory or file descriptors long before the
stack is useful, and a typo (`--sidecars 100000`) would fork until the machine gave up.
A real fleet that size belongs on Kubernetes (docs/kubernetes.md). Kept light
so the pure `--chaos` parser can check against it (it imports only the errors).
"""

from __future__ import annotations

from wsop.errors import UsageError

MAX_SIDECARS = 64


def check_sidecar_count(count: int, what: str = "--sidecars") -> None:
    """UsageError (exit 2) unless 1 <= count <= MAX_SIDECARS, before anything starts."""
    if count < 1:
        raise UsageError(f"{what} must be at least 1, got {count}")
    if count > MAX_SIDECARS:
        raise UsageError(
            f"{what} is at most {MAX_SIDECARS} on the local stack, got {count} "
            "(each sidecar is a process of its own)"
        )
