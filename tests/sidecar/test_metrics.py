"""The sidecar's lazy metrics: plain ints on the hot path, prometheus at the scrape."""

from __future__ import annotations

import math
from collections import Counter as Tally

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from wsop.sidecar.metrics import LazyHistogram, TalliedCounter


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


@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), max_size=40))
def test_a_lazy_histogram_renders_what_a_prometheus_histogram_does(values: list[float]) -> None:
    buckets = (0.001, 0.01, 0.1, 1, 5)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    lazy = LazyHistogram("wsop_h_seconds", "h", buckets, ours)
    plain = Histogram("wsop_h_seconds", "h", buckets=buckets, registry=theirs)
    for value in values:
        lazy.observe(value)
        plain.observe(value)

    def samples(registry: CollectorRegistry) -> dict:
        found = {}
        for metric in registry.collect():
            for s in metric.samples:
                if not s.name.endswith("_created"):
                    found[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return found

    got, want = samples(ours), samples(theirs)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert math.isclose(got[key], value, abs_tol=1e-9), key
