"""The cyclic garbage collector, kept off hot paths that allocate long-lived containers.

A server or a load worker under traffic books containers that outlive a young
collection — a message's ack and its history entries on a sidecar, a message's ledger
entry in a load worker — so with CPython's default thresholds (a young collection every
700 container allocations) nearly all of them are promoted and scanned again and again
by the older collections, along with everything the process built at start-up (modules,
the ring, locust and gevent). Measured: 6–10% of a sidecar's CPU under team fan-out
(bench/peers.py, team row), ~3% of a load worker. Everything alive once the process is
ready is frozen out of the scans (`gc.freeze`), and the young generation is collected
less often, by which time most of those containers were freed by reference counting.
Cycles are still collected; they just wait a little longer — which has a price where
connections open in bursts: the handshakes' cyclic garbage waits for the next young
collection, ~0.5 KB more RSS per idle connection in bench/peers.py's idle row (11.2–11.4
KB against 10.6–10.8 with CPython's 700 and the same freeze), for ~3% less CPU per
team delivery than that (paired runs after the lean resolution connection; before it,
the collector's share was larger).
"""

from __future__ import annotations

import gc
from typing import Final

SERVER_YOUNG: Final = 20_000
"""Container allocations between two young collections in `wsop lb`/`wsop sidecar`."""
WORKER_YOUNG: Final = 100_000
"""The same in a load-test worker (its ledger entries live for a grace period)."""


def quiet_gc(young: int) -> None:
    """Freeze what is alive now, then collect the young generation every `young`
    container allocations (and the older ones at CPython's default ratios)."""
    gc.freeze()
    gc.set_threshold(young, 10, 10)
