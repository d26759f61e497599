"""The LB's counters: plain ints on the hot path, turned into Prometheus text at scrape time.

A `prometheus_client.Counter.inc()` takes a lock and walks labels on every call; the LB
counts every relayed frame, so it bumps ints instead and a custom collector (one
registry per process, never the global one) reads them when `/metrics` is scraped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class LBStats:
    """What the LB has done since it started; every field is cheap to bump."""

    def __init__(self) -> None:
        self.client_to_upstream = 0
        self.upstream_to_client = 0
        self.accepted = 0
        self.auth_failures = 0
        self.no_sidecar = 0
        self.orphaned_legs = 0
        """Sidecar legs closed because their client left before its 101 was out."""
        self.upstream_failures: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        """Things the LB would not do: a move to a non-member, a client's control frame."""
        self.per_sidecar: Counter[str] = Counter()
        """Live relayed connections by the sidecar they are routed to."""
        self.api: Counter[str] = Counter()
        """API requests (/publish, /presence): forwarded, or refused_<code> here."""

    @property
    def connections(self) -> int:
        return sum(self.per_sidecar.values())

    def moved(self, old: str, new: str) -> None:
        """A relay switched upstream (rebalance): keep per-sidecar gauges honest."""
        self.per_sidecar[old] -= 1
        if self.per_sidecar[old] <= 0:
            del self.per_sidecar[old]
        self.per_sidecar[new] += 1

    def closed(self, owner: str) -> None:
        self.per_sidecar[owner] -= 1
        if self.per_sidecar[owner] <= 0:
            del self.per_sidecar[owner]


def _labelled(name: str, doc: str, label: str, counts: Counter[str]) -> CounterMetricFamily:
    """One counter family with a sample per key, in a stable order for diffable scrapes."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


class _Collector(Collector):
    def __init__(self, stats: LBStats, name: str) -> None:
        self.stats = stats
        self.name = name

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.stats
        live = GaugeMetricFamily(
            "wsop_lb_connections", "Client connections being relayed.", labels=["sidecar"]
        )
        for sidecar, count in sorted(s.per_sidecar.items()):
            live.add_metric([sidecar], count)
        yield live
        total = GaugeMetricFamily("wsop_lb_open_connections", "All relayed connections.")
        total.add_metric([], s.connections)
        yield total
        msgs = CounterMetricFamily(
            "wsop_lb_messages", "Messages relayed, by direction.", labels=["direction"]
        )
        msgs.add_metric(["client_to_upstream"], s.client_to_upstream)
        msgs.add_metric(["upstream_to_client"], s.upstream_to_client)
        yield msgs
        yield CounterMetricFamily(
            "wsop_lb_accepted", "Client connections accepted.", value=s.accepted
        )
        yield _labelled(
            "wsop_lb_api_requests",
            "Publish and presence requests: forwarded to a sidecar, or refused by the LB.",
            "result",
            s.api,
        )
        yield CounterMetricFamily(
            "wsop_lb_auth_failures", "Handshakes refused with 401.", value=s.auth_failures
        )
        yield CounterMetricFamily(
            "wsop_lb_no_sidecar", "Handshakes refused 503: no sidecars.", value=s.no_sidecar
        )
        yield CounterMetricFamily(
            "wsop_lb_orphaned_legs",
            "Sidecar legs closed because their client left before its 101 was out.",
            value=s.orphaned_legs,
        )
        yield _labelled(
            "wsop_lb_upstream_failures",
            "Upstream connects/links that failed.",
            "reason",
            s.upstream_failures,
        )
        yield _labelled(
            "wsop_lb_refused",
            "Requests the LB ignored: moves to a non-member, control frames from clients.",
            "what",
            s.refused,
        )


def make_registry(stats: LBStats, name: str = "lb") -> CollectorRegistry:
    """A registry of this process's own (no global state shared with other servers/tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, name))
    return registry


def render(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode("utf-8")
