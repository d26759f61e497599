"""The sidecar's lazy metrics: plain ints on the hot path, prometheus at the scrape."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter

from wsop.sidecar.metrics import TalliedCounter


def test_a_tallied_counter_adds_what_each_label_gained_since_the_last_scrape() -> None:
    registry = CollectorRegistry()
    counter = TalliedCounter(Counter("wsop_t", "t", ["reason"], registry=registry))
    tally: Tally[str] = Tally()

    def value(label: str) -> float | None:
        return registry.get_sample_value("wsop_t_total", {"reason": label})

    tally["age"] += 3
    counter.sync(tally)
    counter.sync(tally)  # nothing new: nothing added
    assert value("age") == 3 and value("count") is None
    tally["age"] += 2
    tally["count"] += 1
    counter.sync(tally)
    assert value("age") == 5 and value("count") == 1
