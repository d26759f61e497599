"""Delivery latencies, gathered per interval and handed to locust's stats in bulk.

Locust's stats (the `WS direct` / `WS team` rows of report.html and the CSVs, the
p50/p95/p99 of the summary and the live view) used to get one `request` event per
delivery: a listener chain, a dict update and a time() call each, 7-8% of the
generator at 4K msg/s. Here a delivery costs one dict increment in a per-interval
histogram of whole milliseconds; once a second `flush` folds each histogram into
locust's entries with `StatsEntry.extend`, the same call the master uses to merge its
workers' reports (so the rolling "current" percentiles keep working).

Whole-millisecond buckets lose nothing locust keeps: it rounds response times to two
significant digits above 100 ms and to the millisecond below.
"""

from __future__ import annotations

import time
from typing import Any

KINDS = ("direct", "team")


class LatencyBook:
    """Per-interval histograms of delivery latency (ms) and bytes, by kind."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.hist: dict[str, dict[int, int]] = {k: {} for k in KINDS}
        self.total_us: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.bytes: dict[str, int] = dict.fromkeys(KINDS, 0)

    def add(self, kind: str, latency_us: int, length: int) -> None:
        hist = self.hist[kind]
        ms = (latency_us + 500) // 1000
        hist[ms] = hist.get(ms, 0) + 1
        self.total_us[kind] += latency_us
        self.bytes[kind] += length

    def count(self, kind: str) -> int:
        return sum(self.hist[kind].values())

    def take(self) -> dict[str, tuple[dict[int, int], int, int]]:
        """This interval's (histogram, total µs, bytes) by kind; starts a new interval."""
        out = {k: (self.hist[k], self.total_us[k], self.bytes[k]) for k in KINDS if self.hist[k]}
        self._reset()
        return out


def flush(book: LatencyBook, stats: Any, now: float | None = None) -> int:
    """Fold the interval into locust's `RequestStats` (entries `WS <kind>` and the total).

    Returns the number of deliveries handed over.
    """
    from locust.stats import StatsEntry, bucket_response_time

    now = time.time() if now is None else now
    handed = 0
    for kind, (hist, total_us, length) in book.take().items():
        n = sum(hist.values())
        part = StatsEntry(stats, kind, "WS")
        part.num_requests = n
        part.total_response_time = total_us / 1000
        part.min_response_time = min(hist)
        part.max_response_time = max(hist)
        part.total_content_length = length
        part.num_reqs_per_sec = {int(now): n}
        part.last_request_timestamp = now
        part.start_time = now
        buckets: dict[int, int] = {}
        for ms, count in hist.items():
            key = bucket_response_time(ms)
            buckets[key] = buckets.get(key, 0) + count
        part.response_times = buckets
        stats.get(kind, "WS").extend(part)
        stats.total.extend(part)
        handed += n
    return handed
