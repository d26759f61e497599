"""Prometheus metrics of one sidecar process (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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
        self.messages_out = Counter(
            "wsop_messages_out",
            "Frames written to local client connections",
            registry=self.registry,
        )
        self.forwarded = Counter(
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
        self.errors = Counter(
            "wsop_client_errors", "Error frames sent to clients", ["code"], registry=self.registry
        )
        self.ack_latency = Histogram(
            "wsop_delivery_seconds",
            "From a client frame's arrival to its ack (all owners answered)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        # Children resolved once: `.labels()` is a dict lookup under a lock, per call.
        self.in_direct = self.messages_in.labels("direct")
        self.in_team = self.messages_in.labels("team")
        self.info = Gauge(
            "wsop_sidecar_info", "Sidecar identity", ["sidecar"], registry=self.registry
        )
        self.info.labels(**labels).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
