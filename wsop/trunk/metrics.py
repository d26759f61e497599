"""Trunk counters on `/metrics`, read from the plain ints the hot path bumps.

Each end (the LB, a sidecar) keeps one `TrunkStats` for all its trunks; a collector
turns it into Prometheus families at scrape time, like the LB's own counters, so a
trunk's write path never takes a prometheus lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from wsop.trunk.mux import TrunkStats

GAUGES = frozenset({"open"})
"""Fields that go up and down (the rest only grow)."""


class TrunkCollector(Collector):
    """`{prefix}_trunks_<field>` for every field of `stats` (e.g. `wsop_lb_trunks_open`)."""

    def __init__(self, stats: TrunkStats, prefix: str) -> None:
        self.stats = stats
        self.prefix = prefix

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        for field in fields(self.stats):
            name = f"{self.prefix}_trunks_{field.name}"
            doc = f"Trunks (LB<->sidecar multiplexed connections): {field.name.replace('_', ' ')}."
            value = getattr(self.stats, field.name)
            if field.name in GAUGES:
                yield GaugeMetricFamily(name, doc, value=value)
            else:
                yield CounterMetricFamily(name, doc, value=value)
