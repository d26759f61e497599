"""Prometheus metrics of one sidecar process (its own registry, so tests can run several).

The counters bumped once or more per message are plain ints (`LazyCounter`), added to
their prometheus counters when `/metrics` is scraped: a prometheus `inc` takes a lock
and costs ~0.25 µs, a few per message on a path that has ~15 µs in all.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

TENANT_LABELS = 20
"""Tenants that get a label of their own in per-tenant metrics."""


class LazyCounter:
    """An int for the hot path; `sync` hands what accumulated to the prometheus child."""

    __slots__ = ("value", "_synced", "_child")

    def __init__(self, child: Counter) -> None:
        self.value = 0
        self._synced = 0
        self._child = child

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def sync(self) -> None:
        value = self.value
        if value != self._synced:
            self._child.inc(value - self._synced)
            self._synced = value


class LazyHistogram:
    """A histogram observed on the hot path (once per message) as plain ints: a
    prometheus `observe` takes two locks. Rendered by its own collector at each scrape,
    with the same series a prometheus `Histogram` has."""

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], registry: Any
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # le: value <= bound
        self._sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self._bounds, math.inf), self._counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self._sum
        )


class TalliedCounter:
    """A labelled counter fed from running tallies (label -> count) that a pure core
    keeps without prometheus (the history's evictions, its hand-overs): each label is
    a `LazyCounter` whose value is the tally's, synced at each scrape."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._by_label: dict[str, LazyCounter] = {}

    def sync(self, counts: Mapping[str, int]) -> None:
        for label, value in counts.items():
            lazy = self._by_label.get(label)
            if lazy is None:
                lazy = self._by_label[label] = LazyCounter(self._counter.labels(label))
            lazy.value = value
            lazy.sync()


class SidecarMetrics:
    def __init__(self, name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"sidecar": name}
        self.connections = Gauge(
            "wsop_connections", "Open client connections", registry=self.registry
        )
        self.messages_in = Counter(
            "wsop_messages_in", "Client frames received", ["type"], registry=self.registry
        )
        messages_out = Counter(
            "wsop_messages_out",
            "Frames written to local client connections",
            registry=self.registry,
        )
        forwarded = Counter(
            "wsop_messages_forwarded",
            "Deliveries forwarded to peer sidecars",
            registry=self.registry,
        )
        self.failed = Counter(
            "wsop_deliveries_failed",
            "Recipients a message could not reach",
            ["reason"],
            registry=self.registry,
        )
        self.peer_items_lost = Counter(
            "wsop_peer_items_lost",
            "Items a peer link could not carry (deliveries are also counted as failed)",
            ["kind"],
            registry=self.registry,
        )
        self.slow_clients = Counter(
            "wsop_slow_clients_closed",
            "Client connections closed because they stopped reading their messages",
            registry=self.registry,
        )
        self.quota_refused = Counter(
            "wsop_quota_refused",
            "Handshakes refused (429) over a connection limit",
            ["limit", "tenant"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "wsop_rate_limited",
            "Messages refused with rate_limited",
            ["tenant"],
            registry=self.registry,
        )
        self._tenants: dict[str, str] = {}
        self._tenant_messages = Counter(
            "wsop_tenant_messages_in",
            "Client messages received, by tenant (the first 20 tenants; the rest: other)",
            ["tenant"],
            registry=self.registry,
        )
        self._per_tenant: dict[str, LazyCounter] = {}
        self._by_label: dict[str, LazyCounter] = {}
        self.publishes = Counter(
            "wsop_publish_requests",
            "POST /publish requests answered, by result (ack, or the error code)",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "wsop_client_errors", "Error frames sent to clients", ["code"], registry=self.registry
        )
        self.ack_latency = LazyHistogram(
            "wsop_delivery_seconds",
            "From a client frame's arrival to its ack (all owners answered)",
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            self.registry,
        )
        self.in_direct = LazyCounter(self.messages_in.labels("direct"))
        self.in_team = LazyCounter(self.messages_in.labels("team"))
        self.messages_out = LazyCounter(messages_out)
        self.forwarded = LazyCounter(forwarded)
        self._lazy = (self.in_direct, self.in_team, self.messages_out, self.forwarded)
        self.info = Gauge(
            "wsop_sidecar_info", "Sidecar identity", ["sidecar"], registry=self.registry
        )
        self.info.labels(**labels).set(1)
        self.before_render: list[Callable[[], None]] = []
        """Called at each scrape, before rendering (numbers kept off the metrics)."""

    def tenant_label(self, tenant: str) -> str:
        """The `tenant` label value: the first `TENANT_LABELS` tenants seen get their own,
        every later one is "other" — a label per tenant would be unbounded cardinality."""
        label = self._tenants.get(tenant)
        if label is None:
            label = tenant if len(self._tenants) < TENANT_LABELS else "other"
            if len(self._tenants) < 4 * TENANT_LABELS:  # bounded memory for the lookups
                self._tenants[tenant] = label
        return label

    def tenant_messages(self, tenant: str) -> LazyCounter:
        """The per-tenant message counter (an int on the hot path, synced on scrape)."""
        counter = self._per_tenant.get(tenant)
        if counter is None:
            label = self.tenant_label(tenant)
            counter = self._by_label.get(label)
            if counter is None:
                counter = self._by_label[label] = LazyCounter(self._tenant_messages.labels(label))
            if len(self._per_tenant) < 4 * TENANT_LABELS:
                self._per_tenant[tenant] = counter
        return counter

    def render(self) -> bytes:
        for hook in self.before_render:
            hook()
        for counter in self._by_label.values():
            counter.sync()
        for counter in self._lazy:
            counter.sync()
        return generate_latest(self.registry)
